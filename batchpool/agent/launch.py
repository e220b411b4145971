"""Controller-side helpers for the node agent: bootstrap command and message framing.

The controller runs ``bootstrap_command(...)`` on the node with the channel as its
stdin/stdout, writes ``bootstrap_payload()`` (the agent's source, length-prefixed) and
then newline-delimited JSON messages made with ``encode``; every line the agent writes
back is parsed with ``decode``. The protocol itself is described in docs/protocol.md.
"""

from __future__ import annotations

import functools
import json
import shlex
from collections.abc import Sequence
from importlib import resources
from typing import Any

from batchpool.errors import ProtocolError

__all__ = [
    "AGENT_NAME",
    "AGENT_PYTHON_ARGS",
    "AGENT_SOURCE",  # noqa: F822 (module __getattr__, read lazily)
    "BOOTSTRAP",
    "agent_source",
    "bootstrap_command",
    "bootstrap_payload",
    "decode",
    "encode",
    "worker_source",
]

AGENT_NAME = "__batchpool_agent__"
"""The ``__name__`` the agent's source is executed under on the node."""

# Runs on the node under any python3 >= 3.8: read "<length>\n", then exactly that many
# bytes of source from the same buffered stdin, and run them. The agent keeps reading
# its messages from that buffer, so bytes sent right after the source are not lost.
BOOTSTRAP = (
    "import sys;b=sys.stdin.buffer;n=int(b.readline());s=b.read(n);"
    "len(s)==n or sys.exit('batchpool agent: short source (%d of %d bytes)'%(len(s),n));"
    "exec(compile(s,'batchpool-agent','exec'),{'__name__':'" + AGENT_NAME + "'})"
)

AGENT_PYTHON_ARGS = ("-S",)
"""Interpreter options the pools start their agents with. The agent needs only the
standard library, so it skips `site` (no site-packages, no .pth files): ~10 ms off every
node start here, more where many packages or .pth hooks are installed. Its workers and
tasks are separate interpreters, started without these options."""

_encoder = json.JSONEncoder(separators=(",", ":"))


@functools.cache
def agent_source() -> bytes:
    """The agent's source code (agent.py), read on first use and cached."""
    return resources.files("batchpool.agent").joinpath("agent.py").read_bytes()


@functools.cache
def worker_source() -> str:
    """The warm worker's source (worker.py), sent to each agent once."""
    return resources.files("batchpool.agent").joinpath("worker.py").read_text()


def __getattr__(name: str) -> bytes:
    # AGENT_SOURCE is computed on first access so that importing this module does no I/O.
    # (The agent's constants, GRACE and PROTOCOL_VERSION, live in agent.py; this module
    # does not import it: 10 ms that `batchpool run` would pay before starting an agent.)
    if name == "AGENT_SOURCE":
        return agent_source()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def bootstrap_command(python: str, workdir: str, heartbeat: float,
                      python_args: Sequence[str] = ()) -> str:
    """The shell command line that starts the agent on a node.

    `python` is one program (a name looked up on the node's PATH, or a path); extra
    interpreter options such as ``("-I", "-S")`` go in `python_args`. `workdir` may be
    relative to the login directory or start with ``~``; the agent makes it absolute.
    The agent then waits for ``bootstrap_payload()`` on its stdin.
    """
    words = [python, *python_args, "-u", "-c", BOOTSTRAP, workdir, repr(float(heartbeat))]
    return shlex.join(words)


def bootstrap_payload() -> bytes:
    """What the controller writes first: the source length, a newline, the source."""
    src = agent_source()
    return b"%d\n" % len(src) + src


def encode(msg: dict[str, Any]) -> bytes:
    """One message as a compact JSON line."""
    return _encoder.encode(msg).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line from the agent; ProtocolError if it is not a message."""
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"agent sent a malformed line ({exc}): {line[:200]!r}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ProtocolError(f"agent sent a line that is not a message: {line[:200]!r}")
    return msg
