"""The embedded transport: "nodes" are processes on this machine, reached through pipes.

It speaks the same interface as SSH, and the node agent is started the same way (its
source sent over stdin), so the local pool exercises the real agent path.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

from batchpool.errors import TransportError
from batchpool.transport.base import AgentStream, CommandResult, Connection, NodeAddress, Transport


class _ProcessStream:
    """An AgentStream over a child process's stdin/stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout

    async def readline(self) -> bytes:
        try:
            return await self._stdout.readline()
        except (ConnectionError, ValueError):
            return b""

    async def read(self, limit: int) -> bytes:
        try:
            return await self._stdout.read(limit)
        except (ConnectionError, ValueError):
            return b""

    def write(self, data: bytes) -> None:
        if not self._stdin.is_closing():
            self._stdin.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._stdin.drain()

    def close(self) -> None:
        if not self._stdin.is_closing():
            self._stdin.close()


class LocalConnection(Connection):
    """This machine, as a node."""

    def __init__(self) -> None:
        self._processes: list[asyncio.subprocess.Process] = []

    async def run(self, command: str, timeout: float | None = None) -> CommandResult:
        process = await asyncio.create_subprocess_shell(
            command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise TransportError(f"local command timed out after {timeout}s: {command}") from None
        return CommandResult(process.returncode, out.decode(errors="replace"),
                             err.decode(errors="replace"))

    async def put(self, local: Path, remote: str) -> None:
        await asyncio.to_thread(_copy, local, Path(remote))

    async def get(self, remote: str, local: Path) -> None:
        await asyncio.to_thread(_copy, Path(remote), local)

    async def start_agent(self, command: str) -> AgentStream:
        process = await asyncio.create_subprocess_shell(
            command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=2**24)
        self._processes.append(process)
        return _ProcessStream(process)

    async def close(self) -> None:
        for process in self._processes:
            if process.stdin is not None and not process.stdin.is_closing():
                process.stdin.close()
        for process in self._processes:
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                process.kill()
                await process.wait()
        self._processes.clear()


class LocalTransport(Transport):
    """Connections to this machine; the address is ignored."""

    async def connect(self, address: NodeAddress, timeout: float = 15.0) -> Connection:
        return LocalConnection()


def _copy(source: Path, target: Path) -> None:
    if source.resolve() == target.resolve():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
