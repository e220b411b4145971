"""Job specs: the typed model, loading with file:line errors, arrays and placeholders."""

from batchpool.spec.load import load_spec, parse_spec_text
from batchpool.spec.model import JobSpec, Member, MpiSpec, TaskGroupSpec
from batchpool.spec.placeholders import render_command

__all__ = [
    "JobSpec",
    "Member",
    "MpiSpec",
    "TaskGroupSpec",
    "load_spec",
    "parse_spec_text",
    "render_command",
]
