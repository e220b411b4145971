"""How batchpool reaches nodes: the `Transport` interface and its implementations.

`batchpool.transport.base` is the interface. The SSH implementation lives in
`batchpool.transport.ssh` (the only module that imports asyncssh); it is loaded on
first use, so importing this package stays cheap and works without touching asyncssh.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from batchpool.transport.base import (
    AgentStream,
    CommandResult,
    Connection,
    NodeAddress,
    Transport,
    quote_command,
)

if TYPE_CHECKING:
    from batchpool.transport.ssh import SshConnection, SshOptions, SshTransport

_LAZY = {
    "SshConnection": "batchpool.transport.ssh",
    "SshOptions": "batchpool.transport.ssh",
    "SshTransport": "batchpool.transport.ssh",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AgentStream",
    "CommandResult",
    "Connection",
    "NodeAddress",
    "SshConnection",
    "SshOptions",
    "SshTransport",
    "Transport",
    "quote_command",
]
