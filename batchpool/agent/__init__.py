"""The node agent (``agent.py``, stdlib-only, sent to nodes) and its wire protocol.

``launch`` holds the controller-side helpers; docs/protocol.md describes the messages.
"""

from __future__ import annotations

from batchpool.agent.launch import (
    BOOTSTRAP,
    agent_source,
    bootstrap_command,
    bootstrap_payload,
    decode,
    encode,
)

__all__ = [
    "BOOTSTRAP",
    "agent_source",
    "bootstrap_command",
    "bootstrap_payload",
    "decode",
    "encode",
]
