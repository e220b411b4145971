"""Helpers shared by the benchmarks: temporary state dirs, timing, result lines."""

from __future__ import annotations

import asyncio
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batchpool.config import local_pool
from batchpool.progress import JobProgress
from batchpool.runner import run_jobs
from batchpool.spec import parse_spec_text
from batchpool.store import Store


@contextmanager
def private_home() -> Iterator[Path]:
    """A throw-away $BATCHPOOL_HOME for one benchmark."""
    with tempfile.TemporaryDirectory(prefix="batchpool-bench-") as tmp:
        old = os.environ.get("BATCHPOOL_HOME")
        os.environ["BATCHPOOL_HOME"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("BATCHPOOL_HOME", None)
            else:
                os.environ["BATCHPOOL_HOME"] = old


def self_cpu() -> float:
    """CPU seconds of this process (all its threads, not its children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_local(spec_text: str, home: Path) -> tuple[JobProgress, float, float]:
    """Run a TOML spec on the local pool in this process: (progress, wall s, self CPU s)."""
    spec = parse_spec_text(spec_text, "bench.toml", "toml", home)
    store = Store(home / "batchpool.db")
    job_id = store.submit(spec, "local", state="running")
    cpu, wall = self_cpu(), time.perf_counter()
    results = asyncio.run(run_jobs(store, local_pool(), [job_id]))
    return results[job_id], time.perf_counter() - wall, self_cpu() - cpu


def report(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"{name:<44} {value:>12.3f} {unit:<10} {note}")
