"""One live node: its connection, its agent, its state, and the messages in between.

A session connects through whatever Transport it is given, starts the node agent,
runs the pool's start task, then forwards agent messages to the controller. It makes
no scheduling decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchpool.agent.launch import (
    AGENT_PYTHON_ARGS,
    bootstrap_command,
    bootstrap_payload,
    decode,
    encode,
    worker_source,
)
from batchpool.errors import BatchpoolError, ProtocolError, TransportError
from batchpool.pool.states import READY, NodeState, can_move
from batchpool.transport.base import AgentStream, Connection, NodeAddress, Transport

log = logging.getLogger(__name__)

MessageHandler = Callable[["NodeSession", dict[str, Any]], None]
LostHandler = Callable[["NodeSession", str], None]


@dataclass(frozen=True)
class NodeSettings:
    """How to bring up a node (from the pool's config)."""

    python: str
    workdir: str
    slots: int | None            # None: one per core, as the agent reports
    start_task: str | None
    heartbeat: float
    local_results: Path | None   # the node's workdir IS this local dir (local pool)


def agent_command(settings: NodeSettings) -> str:
    """The command line that starts a node's agent."""
    return bootstrap_command(settings.python, settings.workdir, settings.heartbeat,
                             AGENT_PYTHON_ARGS)


class NodeSession:
    """A node from connect to close."""

    def __init__(self, address: NodeAddress, transport: Transport, settings: NodeSettings,
                 on_message: MessageHandler, on_lost: LostHandler) -> None:
        self.address = address
        self.name = address.name
        self.settings = settings
        self.state = NodeState.CONNECTING
        self.reason: str | None = None
        self.slots = 0
        self.cores = 0
        self.load: float | None = None
        self.last_seen = time.time()
        self.workdir = settings.workdir
        self._transport = transport
        self._on_message = on_message
        self._on_lost = on_lost
        self._connection: Connection | None = None
        self._stream: AgentStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._staged: dict[str, str] = {}       # local file path -> path on the node
        self._closing: asyncio.Task[None] | None = None
        self._outbox: list[bytes] = []
        self._handling = False   # inside _read_loop's handling of a chunk: it flushes
        self._shares_results = False

    # -- lifecycle -----------------------------------------------------------------------
    def move(self, state: NodeState, reason: str | None = None) -> None:
        if not can_move(self.state, state):
            log.debug("node %s: ignoring move %s -> %s", self.name, self.state, state)
            return
        self.state, self.reason = state, reason

    @property
    def ready(self) -> bool:
        return self.state in READY

    async def start(self, connect_timeout: float, calls: int = 0) -> None:
        """Connect, start the agent, run the start task; ends READY or UNUSABLE.

        `calls`: how many Python calls are expected. The agent keeps that many warm
        workers started (at most one per slot), once the start task is done: what the
        start task installs must be there when a worker's interpreter starts. Until then
        it keeps none (stopping any started ahead: see pool/local.py).
        """
        self.move(NodeState.CONNECTING)
        try:
            self._connection = await self._transport.connect(self.address, connect_timeout)
            stream = await self._connection.start_agent(agent_command(self.settings),
                                                        bootstrap_payload())
            await stream.drain()
            hello = await asyncio.wait_for(self._first_message(stream), connect_timeout)
        except (BatchpoolError, OSError, TimeoutError) as exc:
            await self._give_up(_reason_for(exc, self.settings.python))
            return
        self._stream = stream
        self.cores = int(hello.get("cores") or 1)
        self.workdir = str(hello.get("workdir") or self.settings.workdir)
        local = self.settings.local_results
        self._shares_results = local is not None and Path(self.workdir) == local
        self.slots = self.settings.slots or self.cores
        self.last_seen = time.time()
        self._reader = asyncio.create_task(self._read_loop(), name=f"read-{self.name}")
        # the agent runs at most `slots` tasks at once; more may be sent ahead (prefetch)
        self.send({"op": "slots", "n": self.slots})
        warm = min(self.slots, calls)
        start_task = self.settings.start_task
        self.send({"op": "worker", "source": worker_source(),  # for Python calls
                   "warm": 0 if start_task else warm})
        if start_task:
            self.move(NodeState.STARTING)
            if not await self._run_start_task(start_task):
                return
            if warm:
                self.send({"op": "worker", "source": worker_source(), "warm": warm})
        self.move(NodeState.IDLE)

    async def _first_message(self, stream: AgentStream) -> dict[str, Any]:
        line = await stream.readline()
        if not line:
            raise TransportError(
                f"the agent did not start (is {self.settings.python!r} a working Python 3 "
                "on the node?)")
        message = decode(line)
        if message.get("op") == "fatal":
            raise TransportError(f"the agent could not start: {message.get('error')}")
        if message.get("op") != "hello":
            raise ProtocolError(f"expected hello from the agent, got {message.get('op')!r}")
        return message

    async def _run_start_task(self, command: str) -> bool:
        assert self._connection is not None
        workdir = shlex.quote(self.workdir)
        script = f"mkdir -p {workdir} && cd {workdir} && {command}"
        try:
            result = await self._connection.run(script)
        except BatchpoolError as exc:
            await self._give_up(f"start task could not run: {exc}")
            return False
        if result.exit_status != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])
            await self._give_up(
                f"start task failed with exit {result.exit_status}" + (f": {tail}" if tail else ""))
            return False
        return True

    async def _give_up(self, reason: str) -> None:
        log.warning("node %s unusable: %s", self.name, reason)
        self.move(NodeState.UNUSABLE, reason)
        await self.close()

    async def close(self) -> None:
        """Stop the agent (its tasks die with it) and close the connection."""
        if self._stream is not None:
            try:
                self._stream.write(encode({"op": "exit"}))
                await asyncio.wait_for(self._stream.drain(), 2.0)
            except (OSError, TimeoutError, BatchpoolError):
                pass
            self._stream.close()
            self._stream = None
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
            self._reader = None
        if self._connection is not None:
            with contextlib.suppress(OSError, TimeoutError, BatchpoolError):
                await asyncio.wait_for(self._connection.close(), 5.0)
            self._connection = None

    # -- messages ------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for the agent.

        Messages queued in one turn of the event loop go out in one write: fewer
        system calls and fewer wake-ups of the agent.
        """
        if self._stream is None:
            return
        if not self._outbox and not self._handling:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(encode(message))

    def _flush(self) -> None:
        if self._stream is None or not self._outbox:
            self._outbox.clear()
            return
        # No drain per write: what is queued for an agent is bounded by the scheduler
        # (at most its slots times the prefetch factor in flight), so the buffer stays small.
        self._stream.write(b"".join(self._outbox))
        self._outbox.clear()

    async def _read_loop(self) -> None:
        """Hand every complete line to the controller, a whole chunk at a time."""
        assert self._stream is not None
        stream = self._stream
        reason = "connection to the node closed"
        partial = b""
        try:
            while True:
                data = await stream.read(1 << 16)
                if not data:
                    break
                self.last_seen = time.time()
                *lines, partial = (partial + data).split(b"\n")
                self._handling = True
                try:
                    for line in lines:
                        if line:
                            self._handle(line)
                finally:
                    self._handling = False
                self._flush()  # replies (new tasks for the freed slots) go out at once
        except (OSError, BatchpoolError) as exc:
            reason = f"connection to the node failed: {exc}"
        # a node already marked lost (say, for missed heartbeats) keeps its first reason
        if self.state not in (NodeState.LEAVING, NodeState.UNUSABLE, NodeState.UNREACHABLE):
            self._on_lost(self, reason)

    def _handle(self, line: bytes) -> None:
        try:
            message = decode(line)
        except ProtocolError as exc:
            log.warning("node %s: %s", self.name, exc)
            return
        if message.get("op") == "hb":
            self.load = message.get("load")
        self._on_message(self, message)

    def lost(self, reason: str) -> None:
        """Mark the node unreachable and drop its connection without waiting on it."""
        self.move(NodeState.UNREACHABLE, reason)
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        connection, self._connection = self._connection, None
        if connection is not None:
            self._closing = asyncio.create_task(_close_quietly(connection))

    # -- files ---------------------------------------------------------------------------
    def node_path(self, relative: str) -> str:
        """`relative` (a POSIX path) under the node's workdir."""
        return f"{self.workdir.rstrip('/')}/{relative}"

    @property
    def shares_results(self) -> bool:
        """True when the node's workdir is the local result root (nothing to copy)."""
        return self._shares_results

    async def stage_file(self, local: Path) -> str:
        """The node path of a resource file, uploading it once per content hash."""
        key = str(local)
        if key in self._staged:
            return self._staged[key]
        if self.shares_results:
            self._staged[key] = key
            return key
        digest = await asyncio.to_thread(_sha256, local)
        remote = self.node_path(f"files/{digest}/{local.name}")
        assert self._connection is not None
        await self._connection.put(local, remote)
        self._staged[key] = remote
        return remote

    async def upload(self, local: Path, relative: str) -> None:
        """Copy a local file into the node's workdir (inputs of a dependant task)."""
        if self._connection is None:
            raise TransportError(f"node {self.name} is not connected")
        await self._connection.put(local, self.node_path(relative))

    async def download(self, relative: str, local: Path) -> None:
        """Copy a file from the node's workdir into the local result root."""
        if self._connection is None:
            raise TransportError(f"node {self.name} is not connected")
        await self._connection.get(self.node_path(relative), local)


async def _close_quietly(connection: Connection) -> None:
    with contextlib.suppress(OSError, TimeoutError, BatchpoolError):
        await asyncio.wait_for(connection.close(), 5.0)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _reason_for(exc: BaseException, python: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer from the agent (is {python!r} a working Python 3 on the node?)"
    return str(exc) or type(exc).__name__
