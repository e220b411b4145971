"""batchpool: self-hosted batch pools over plain SSH.

The public API is what this module exports; everything else is internal.
"""

from typing import TYPE_CHECKING, Any

from batchpool.errors import (
    BatchpoolError,
    CommandError,
    ConfigError,
    HostKeyError,
    NotFound,
    ProtocolError,
    SpecError,
    StoreError,
    TransportError,
)

if TYPE_CHECKING:
    from batchpool.executor import Executor, RemoteCallError

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The Executor pulls in the controller: imported on first use, not with the package.
    if name in ("Executor", "RemoteCallError"):
        from batchpool import executor

        return getattr(executor, name)
    raise AttributeError(f"module 'batchpool' has no attribute {name!r}")


__all__ = [
    "BatchpoolError",
    "CommandError",
    "ConfigError",
    "Executor",
    "HostKeyError",
    "NotFound",
    "ProtocolError",
    "RemoteCallError",
    "SpecError",
    "StoreError",
    "TransportError",
    "__version__",
]
