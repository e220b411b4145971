"""Two raw asyncssh baselines for running many short commands on SSH nodes.

* `exec_channels`: one connection per node, every command its own exec channel
  (`conn.run`), `slots` channels at a time per connection. What a controller without
  a node agent would do.
* `persistent_workers`: one connection and one exec channel per node running
  `worker_remote.py`, `slots` commands in flight per node. The least a persistent
  agent can do, so batchpool's agent is measured against it.

Both take commands from one shared counter, so a faster node takes more of them, and
both time the whole run including connecting and closing. Standalone, against a
running dev cluster:

    python3 benchmarks/baselines/asyncssh_baselines.py --cluster ROOT [--tasks 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import resource
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

WORKER_SOURCE = Path(__file__).with_name("worker_remote.py")


@dataclass(frozen=True)
class Node:
    """Where and how to log in to one node."""

    host: str
    port: int
    username: str
    client_key: Path
    known_hosts: Path


@dataclass(frozen=True)
class Timing:
    """One baseline run: wall seconds (connect to close), of which connecting, and the
    CPU seconds of this process."""

    tasks: int
    seconds: float
    connect_seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


class _Counter:
    """Commands left to hand out; shared by every lane of every node."""

    def __init__(self, n: int) -> None:
        self.left = n

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def connect(node: Node) -> asyncssh.SSHClientConnection:
    # config=None and agent_path=None: only the given key and known_hosts count
    return await asyncssh.connect(node.host, port=node.port, username=node.username,
                                  client_keys=[str(node.client_key)],
                                  known_hosts=str(node.known_hosts), config=None,
                                  agent_path=None)


Driver = Callable[[asyncssh.SSHClientConnection, _Counter], Awaitable[None]]


async def _timed(nodes: Sequence[Node], n: int, drive: Driver) -> Timing:
    cpu, started = _cpu(), time.perf_counter()
    conns = await asyncio.gather(*(connect(node) for node in nodes))
    connected = time.perf_counter()
    counter = _Counter(n)
    try:
        await asyncio.gather(*(drive(conn, counter) for conn in conns))
    finally:
        for conn in conns:
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn in conns))
    return Timing(n, time.perf_counter() - started, connected - started, _cpu() - cpu)


async def exec_channels(nodes: Sequence[Node], slots: int, n: int,
                        command: str = "true") -> Timing:
    """Run `command` n times, each on a new exec channel, `slots` per connection."""

    async def lane(conn: asyncssh.SSHClientConnection, counter: _Counter) -> None:
        while counter.take():
            result = await conn.run(command)
            if result.exit_status != 0:
                raise RuntimeError(f"{command!r} exited {result.exit_status}: "
                                   f"{result.stderr!r}")

    async def drive(conn: asyncssh.SSHClientConnection, counter: _Counter) -> None:
        await asyncio.gather(*(lane(conn, counter) for _ in range(slots)))

    return await _timed(nodes, n, drive)


async def persistent_workers(nodes: Sequence[Node], slots: int, n: int,
                             python: str = sys.executable,
                             command: str = "true") -> Timing:
    """Run `command` n times through one `worker_remote.py` per node, `slots` in flight."""
    start_worker = shlex.join([python, "-c", WORKER_SOURCE.read_text()])

    async def drive(conn: asyncssh.SSHClientConnection, counter: _Counter) -> None:
        process = await conn.create_process(start_worker)
        free = asyncio.Semaphore(slots)
        sent = 0

        async def results() -> int:
            received = 0
            # not `async for`: asyncssh yields one last "" at end of stream
            while line := await process.stdout.readline():
                ident, _, code = line.rstrip("\n").partition("\t")
                if code != "0":
                    raise RuntimeError(f"command {ident} exited {code}")
                received += 1
                free.release()
            return received

        reader = asyncio.create_task(results())
        try:
            while True:
                acquire = asyncio.ensure_future(free.acquire())
                await asyncio.wait([acquire, reader], return_when=asyncio.FIRST_COMPLETED)
                if not acquire.done():  # the worker died or reported a failure
                    acquire.cancel()
                    await reader
                    raise RuntimeError("the worker stopped before all commands ran")
                if not counter.take():
                    break
                process.stdin.write(f"{sent}\t{command}\n")
                sent += 1
            process.stdin.write_eof()  # the worker exits after its last command
            received = await reader
        finally:
            reader.cancel()
            process.close()
        if received != sent:
            raise RuntimeError(f"sent {sent} commands but got {received} results")

    return await _timed(nodes, n, drive)


def main() -> None:
    from batchpool.devcluster import DevCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", type=Path, required=True, help="a running dev cluster")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=len(os.sched_getaffinity(0)),
                        help="commands in flight per node (default: CPUs here)")
    args = parser.parse_args()
    cluster = DevCluster(args.cluster)
    nodes = [Node(n.host, n.port, getpass.getuser(), cluster.client_key, cluster.known_hosts)
             for n in cluster.status() if n.running]
    if not nodes:
        sys.exit(f"no running node in the dev cluster at {args.cluster}")
    for name, baseline in (("exec channel per task", exec_channels),
                           ("minimal persistent worker", persistent_workers)):
        timing = asyncio.run(baseline(nodes, args.slots, args.tasks))
        print(f"{name:<28} {timing.rate:9.1f} tasks/s  ({timing.seconds:.2f}s, "
              f"connect {timing.connect_seconds:.2f}s, CPU {timing.cpu_seconds:.2f}s)")


if __name__ == "__main__":
    main()
