"""The exception tree: one root, a subtree per subsystem.

    BatchpoolError
    ├── ConfigError          batchpool.toml is wrong (file, line, field)
    ├── SpecError            a job spec is wrong (file, line, field path)
    ├── StoreError           the state store cannot be used
    │   └── NotFound         no such job / task / pool / node
    ├── TransportError       a node cannot be reached or refused us
    │   ├── HostKeyError     unknown or changed host key
    │   └── CommandError     a remote command failed (exit status, stderr tail)
    └── ProtocolError        the node agent said something we do not understand
"""

from __future__ import annotations


class BatchpoolError(Exception):
    """Root of every error batchpool raises on purpose."""


class LocatedError(BatchpoolError):
    """An error in an input file, pinned to file, line and field path."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class ConfigError(LocatedError):
    """batchpool.toml (or an option standing in for it) is invalid."""


class SpecError(LocatedError):
    """A job spec is invalid; nothing was submitted."""


class StoreError(BatchpoolError):
    """The state store cannot be opened, migrated or written."""


class NotFound(StoreError):
    """The named job, task, pool or node does not exist."""


class TransportError(BatchpoolError):
    """A node could not be reached, or the connection to it broke."""


class HostKeyError(TransportError):
    """A host key was unknown or did not match; the message says how to fix it."""


class CommandError(TransportError):
    """A command run on a node failed."""

    def __init__(self, command: str, exit_status: int | None, stderr: str = "") -> None:
        self.command = command
        self.exit_status = exit_status
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(f"command {command!r} exited with {exit_status}{detail}")


class ProtocolError(BatchpoolError):
    """The node agent sent a message that breaks the wire protocol."""
