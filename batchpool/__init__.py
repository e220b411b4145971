"""batchpool: self-hosted batch pools over plain SSH.

The public API is what this module exports; everything else is internal.
"""

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

__version__ = "0.1.0"

__all__ = [
    "BatchpoolError",
    "CommandError",
    "ConfigError",
    "HostKeyError",
    "NotFound",
    "ProtocolError",
    "SpecError",
    "StoreError",
    "TransportError",
    "__version__",
]
