"""The one seam between batchpool and the way it reaches a node.

A `Transport` turns a node address into a `Connection`; a connection can run a one-off
command, copy files both ways, and start the node agent, whose framed messages then
flow over an `AgentStream`. The local transport and the SSH transport are the two
implementations; nothing outside `batchpool.transport` knows which one it holds.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class NodeAddress:
    """How to reach one node. `host` is a name, an IP or an ~/.ssh/config alias."""

    name: str
    host: str = "localhost"
    port: int | None = None
    user: str | None = None


@dataclass(frozen=True)
class CommandResult:
    """What a one-off command on a node did."""

    exit_status: int | None
    stdout: str
    stderr: str


class AgentStream(Protocol):
    """A byte stream to a running node agent: newline-framed messages both ways."""

    async def readline(self) -> bytes:
        """The next line from the agent; b"" once the agent is gone."""

    async def read(self, limit: int) -> bytes:
        """Whatever the agent has sent, up to `limit` bytes (at least one); b"" at the end."""

    def write(self, data: bytes) -> None:
        """Queue bytes for the agent (call `drain` to apply back-pressure)."""

    async def drain(self) -> None:
        """Wait until queued bytes are handed to the OS or the channel."""

    def close(self) -> None:
        """Close our side; the agent sees end of input and stops its tasks."""


class Connection(ABC):
    """An open link to one node."""

    @abstractmethod
    async def run(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run `command` with the node's shell and return its exit status and output."""

    @abstractmethod
    async def put(self, local: Path, remote: str) -> None:
        """Copy a local file to `remote` (absolute, or relative to the login dir)."""

    @abstractmethod
    async def get(self, remote: str, local: Path) -> None:
        """Copy a file from the node to `local`, creating parent directories."""

    @abstractmethod
    async def start_agent(self, command: str, payload: bytes = b"") -> AgentStream:
        """Run `command` (which starts the agent) with stdin/stdout as the message stream,
        and write `payload` (the agent's bootstrap) to it first."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection and everything started over it."""

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Transport(ABC):
    """Opens connections to nodes."""

    @abstractmethod
    async def connect(self, address: NodeAddress, timeout: float = 15.0) -> Connection:
        """Open a connection to `address`; raises TransportError (or HostKeyError)."""


def quote_command(argv: list[str]) -> str:
    """A shell command line running `argv` literally."""
    return " ".join(shlex.quote(a) for a in argv)
