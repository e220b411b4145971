"""The embedded transport: "nodes" are processes on this machine, reached through pipes.

It speaks the same interface as SSH, and the node agent is started the same way (its
source sent over stdin), so the local pool exercises the real agent path.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

from batchpool.errors import TransportError
from batchpool.transport.base import AgentStream, CommandResult, Connection, NodeAddress, Transport

log = logging.getLogger(__name__)

LINE_LIMIT = 2**24   # longest line read from an agent (a done message with inline output)

#: Agents started before the event loop (`start_agent_early`), by (command, payload).
_early: dict[tuple[str, bytes], subprocess.Popen[bytes]] = {}


def start_agent_early(command: str, payload: bytes, ahead: bytes = b"") -> None:
    """Start a local agent now, while this process still has imports to do.

    An agent's interpreter takes about 60 ms to start and compile the agent; started
    here, that happens on another core during `batchpool run`'s own start-up. The first
    `start_agent` with the same command and payload takes it over; one never taken over
    is told to stop (its stdin closed) when this process exits. `ahead` is written after
    the payload: messages that get the agent ready before anyone talks to it.
    """
    if (command, payload) in _early:
        return
    try:
        process = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE)
    except OSError as exc:  # e.g. no process left under a limit: start_agent will try
        log.debug("could not start an agent early: %s", exc)
        return
    assert process.stdin is not None
    try:
        # Under the pipe's capacity (64 KiB on Linux) this does not wait for the agent.
        process.stdin.write(payload + ahead)
        process.stdin.flush()
    except OSError:  # it died at once: start_agent will start one the usual way
        _stop(process)
        return
    if not _early:
        atexit.register(stop_early_agents)
    _early[(command, payload)] = process


def _stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Close our ends of its pipes (end of input: it stops), then wait for it."""
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    _wait_or_kill(process, timeout)


def _wait_or_kill(process: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_early_agents(keep: str | None = None) -> None:
    """Stop the agents started early that no connection took over (but the one started
    with command `keep`, if any)."""
    for key in [key for key in _early if key[0] != keep]:
        _stop(_early.pop(key))


class _ProcessStream:
    """An AgentStream over a child process's stdin/stdout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._stdin = writer
        self._stdout = reader

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


async def _adopt(process: subprocess.Popen[bytes]) -> _ProcessStream:
    """Streams on the event loop over an agent started by `start_agent_early`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                 process.stdout)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop),
        process.stdin)
    return _ProcessStream(reader, asyncio.StreamWriter(transport, protocol, None, loop))


class LocalConnection(Connection):
    """This machine, as a node."""

    def __init__(self) -> None:
        self._agents: list[tuple[_ProcessStream, Callable[[float], Awaitable[None]]]] = []

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

    async def start_agent(self, command: str, payload: bytes = b"") -> AgentStream:
        early = _early.pop((command, payload), None)
        if early is not None and early.poll() is None:
            log.debug("taking over the agent started early (pid %d)", early.pid)
            stream = await _adopt(early)
            self._agents.append((stream, lambda timeout: _wait_popen(early, timeout)))
            return stream
        if early is not None:  # it died before we got to it: start another
            await asyncio.to_thread(_stop, early)
        process = await asyncio.create_subprocess_shell(
            command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT)
        assert process.stdin is not None and process.stdout is not None
        stream = _ProcessStream(process.stdout, process.stdin)
        self._agents.append((stream, lambda timeout: _wait_process(process, timeout)))
        if payload:
            stream.write(payload)
        return stream

    async def close(self) -> None:
        for stream, _ in self._agents:
            stream.close()
        for _, wait in self._agents:
            await wait(5.0)
        self._agents.clear()


async def _wait_process(process: asyncio.subprocess.Process, timeout: float) -> None:
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()


async def _wait_popen(process: subprocess.Popen[bytes], timeout: float) -> None:
    # its pipes belong to the event loop's transports now: only wait (and kill if need be)
    await asyncio.to_thread(_wait_or_kill, process, timeout)


class LocalTransport(Transport):
    """Connections to this machine; the address is ignored."""

    async def connect(self, address: NodeAddress, timeout: float = 15.0) -> Connection:
        return LocalConnection()


def _copy(source: Path, target: Path) -> None:
    if source.resolve() == target.resolve():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
