"""Python calls/s over SSH: batchpool.Executor against Dask distributed and a bare worker.

    python3 benchmarks/executor_dask.py [--nodes 4] [--calls 20000] [--repeat 2]
                                        [--dask-processes] [--json FILE] [--keep]

Brings up its own dev cluster (real sshd daemons on 127.0.0.1) in a private
/tmp/bench-executor-dask-* directory, always stops it at the end (Ctrl-C and SIGTERM
included), and in the same run measures no-op calls/s, `noop(x) -> x`, through:

  batchpool        batchpool.Executor(pool="dev") on the cluster, three forms of map:
                   `ex.map(noop, range(N))` as the Executor does it by default (one task
                   per call until commit 197711b, about four chunks per slot since),
                   `chunksize=1` (one task per call) and `chunksize=N/(nodes*slots*8)`;
  dask             Dask distributed over the same sshd nodes: SSHCluster with a scheduler
                   on node 0 and one worker per node (nthreads = batchpool's slots, or
                   with --dask-processes that many 1-thread worker processes), every
                   address on loopback; `client.gather(client.map(noop, range(N)))`;
  bare worker      the floor: one asyncssh connection per node running a 7-line python
                   worker that reads cloudpickled calls on stdin, calls them in-process
                   and writes pickled results back, calls pipelined (a window in flight).

Every rate is steady state: the pool, cluster or worker is started and warmed up first
(start-up seconds are reported separately), then N calls are timed from the first
submit to the last result (a form that takes under a second is mapped again until a
second has passed). CPU per call is split by side: this process (client), the node
processes under the sshd daemons, sshd itself, and "others": the rest of the machine's
busy time, i.e. other people's work during the measurement. Before each measurement
the 1-minute load average must fall to --max-load (other engineers share this
machine); the load measured is printed.
Target: batchpool >= 5x Dask (judged for the default map and for chunksize=1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import hashlib
import inspect
import json
import logging
import os
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import cloudpickle
from common import dev_cluster as common_dev_cluster
from common import private_home, report

import batchpool
from batchpool.devcluster import POOL_NAME, DevCluster, DevNode, descendants, to_toml

TARGET_VS_DASK = 5.0
LOOPBACK_PREFIX = "tcp://127."


def noop(x: int) -> int:
    """The call every method runs: defined in __main__, so it travels by value."""
    return x


# --- a quiet machine -----------------------------------------------------------------------

def wait_until_quiet(what: str, limit: float, max_wait: float = 600.0,
                     poll: float = 5.0) -> float:
    """Wait until the 1-minute load average is <= `limit` (at most `max_wait` s) and
    return it: other engineers run tests on this 2-core machine, and a measurement that
    shares the cores with them says nothing about batchpool."""
    started = time.monotonic()
    load = os.getloadavg()[0]
    if load > limit:
        print(f"# load {load:.2f} > {limit:g}: waiting before {what}", flush=True)
    while load > limit and time.monotonic() - started < max_wait:
        time.sleep(poll)
        load = os.getloadavg()[0]
    waited = time.monotonic() - started
    note = f", waited {waited:.0f} s" if waited >= 1 else ""
    if load > limit:
        note += f", STILL ABOVE {limit:g}: measuring anyway"
    print(f"# load {load:.2f} before {what}{note}", flush=True)
    return load


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has been busy since boot (user, nice, system,
    irq, softirq: not idle, iowait or steal), from /proc/stat. Less what the benchmark's
    own processes used, it is what others ran meanwhile: the load average before a
    measurement cannot tell whether someone started a test during it."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def others_share(others_seconds: float, wall: float) -> float:
    """Others' CPU as a share of the machine's capacity over `wall` seconds."""
    return max(0.0, others_seconds) / (wall * (os.cpu_count() or 1))


def batchpool_revision() -> str:
    """The commit batchpool is measured at, and whether batchpool/ differs from it:
    another engineer edits batchpool/ while these figures are taken. Read-only git
    (GIT_OPTIONAL_LOCKS=0: not even the index's stat cache is rewritten)."""
    root = Path(batchpool.__file__).resolve().parent.parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              env=env, capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--",
                                "batchpool"], env=env, capture_output=True, check=False)
    except (OSError, subprocess.CalledProcessError):
        return f"unknown commit (sources {source_digest()})"
    state = " + uncommitted changes in batchpool/" if dirty.returncode else ""
    return f"{head.strip()}{state} (sources {source_digest()})"


def source_digest() -> str:
    """A digest of batchpool's sources as they are now: printed at the start and the end
    of a run, so a run during which batchpool/ changed can be told apart."""
    root = Path(batchpool.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def check_unchanged(revision: str) -> None:
    """Warn when batchpool's sources changed since `revision` was taken."""
    now = batchpool_revision()
    if now != revision:
        same = now.rpartition("(")[2] == revision.rpartition("(")[2]
        what = "the commit moved, its sources did not" if same else "its SOURCES changed"
        print(f"# WARNING: batchpool changed during this run ({what}): {revision} -> {now}",
              flush=True)


# --- the dev cluster -----------------------------------------------------------------------

@dataclass
class Started:
    """Processes this benchmark caused on the nodes, by pid and command line: killed at
    the end if they outlived their SSH session (and only if the pid still runs that)."""

    pids: dict[int, bytes] = field(default_factory=dict)

    def record(self, pids: Sequence[int]) -> None:
        for pid in pids:
            with contextlib.suppress(OSError):
                self.pids[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()

    def alive(self) -> list[int]:
        left = []
        for pid, cmdline in self.pids.items():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline:
                    left.append(pid)
        return left

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM what is left, then SIGKILL what ignores it."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = self.alive()
            if not left:
                return
            if sig == signal.SIGKILL:
                print(f"# SIGKILL to {left}", file=sys.stderr)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)


def session_processes(nodes: Sequence[DevNode]) -> list[int]:
    """Everything running under the nodes' sshd listeners except sshd itself."""
    found = []
    for node in nodes:
        if node.pid is None:
            continue
        for pid in descendants(node.pid):
            with contextlib.suppress(OSError):
                if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sshd"):
                    found.append(pid)
    return found


@contextlib.contextmanager
def dev_cluster(n: int, keep: bool = False) -> Iterator[tuple[DevCluster, Path, Started]]:
    """The benchmarks' dev cluster (common.dev_cluster); any recorded node process that
    outlived it is killed before its dir goes."""
    started = Started()
    with common_dev_cluster(n, "bench-executor-dask-", keep,
                            lambda _: started.stop()) as (cluster, tmp):
        yield cluster, tmp, started


def write_config(cluster: DevCluster, nodes: Sequence[DevNode], slots: int, path: Path) -> Path:
    """A batchpool.toml whose pool "dev" is the cluster with an explicit slot count, so
    Dask's workers can be given the same number."""
    table = {**cluster.pool_config(nodes), "slots_per_node": slots}
    path.write_text(to_toml({"default_pool": POOL_NAME}, {f"pools.{POOL_NAME}": table},
                            "written by benchmarks/executor_dask.py"))
    return path


# --- timing --------------------------------------------------------------------------------

@dataclass
class Series:
    """Every sample of one method: calls/s, start-up seconds, load before each sample."""

    rates: list[float] = field(default_factory=list)
    startups: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)  # us per call, by side
    others: list[float] = field(default_factory=list)  # others' share of the machine
    maps: list[int] = field(default_factory=list)  # maps of N calls in each sample

    @property
    def best(self) -> float:
        return max(self.rates)

    def spread(self) -> str:
        return (f"{len(self.rates)} run(s): " + ", ".join(f"{r:.0f}" for r in self.rates)
                + f"; load {min(self.loads):.2f}-{max(self.loads):.2f}, others "
                + "/".join(f"{o:.0%}" for o in self.others))

    def best_cpu(self) -> dict[str, float]:
        """CPU per call in the run with the best rate."""
        return self.cpu[self.rates.index(self.best)] if self.cpu else {}

    def to_json(self) -> dict[str, Any]:
        return {"rates": self.rates, "best": self.best, "median": statistics.median(self.rates),
                "startup_seconds": self.startups, "load_before": self.loads,
                "cpu_us_per_call": self.cpu, "others_share": self.others,
                "maps_per_sample": self.maps}


def cpu_seconds(nodes: Sequence[DevNode]) -> dict[str, float]:
    """CPU seconds so far of this process (all threads: the client side), of the sshd
    processes under the nodes' listeners, and of everything else under them (agents,
    workers, Dask's scheduler and workers): where the cost of a call is paid."""
    tick = os.sysconf("SC_CLK_TCK")
    times = os.times()
    found = {"client": times.user + times.system, "node": 0.0, "sshd": 0.0,
             "machine": machine_busy_seconds()}
    for node in nodes:
        if node.pid is None:
            continue
        for pid in [node.pid, *descendants(node.pid)]:
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                side = ("sshd" if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sshd")
                        else "node")
                found[side] += (int(fields[11]) + int(fields[12])) / tick
    return found


def cpu_per_call(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Microseconds of CPU per call on each side between two `cpu_seconds` readings, and
    `others`: the rest of the machine's busy time, i.e. other engineers' processes
    (processes of ours that ended in between are missed and would count there)."""
    used = {side: (after[side] - before[side]) / n * 1e6 for side in before}
    machine = used.pop("machine")
    used["others"] = max(0.0, machine - sum(used.values()))
    return used


def timed_calls(n: int, run: Callable[[], list[int]], nodes: Sequence[DevNode],
                series: Series, min_seconds: float = 1.0) -> float:
    """Record calls/s and CPU per call of `run`, which must return noop's results for
    range(n) in order; returns the rate. A fast form (a chunked map of N calls takes tens
    of ms) is run again until `min_seconds` have passed, so that neither timer resolution
    nor 10 ms CPU ticks decide its figure."""
    cpu = cpu_seconds(nodes)
    started = time.perf_counter()
    calls = 0
    while True:
        results = run()
        if results != list(range(n)):
            raise RuntimeError(f"wrong results: {len(results)} values, first {results[:5]}")
        calls += n
        seconds = time.perf_counter() - started
        if seconds >= min_seconds:
            break
    series.cpu.append(cpu_per_call(cpu, cpu_seconds(nodes), calls))
    series.others.append(others_share(series.cpu[-1]["others"] * calls / 1e6, seconds))
    series.rates.append(calls / seconds)
    series.maps.append(calls // n)
    return calls / seconds


# --- batchpool -------------------------------------------------------------------------------

def default_chunking() -> str:
    """What `Executor.map` does without `chunksize` in the batchpool measured: it has
    changed (one task per call before 197711b, about four chunks per slot since)."""
    default = inspect.signature(batchpool.Executor.map).parameters["chunksize"].default
    return "one task per call" if default == 1 else "Executor's own chunks"


def batchpool_round(config: Path, nodes: Sequence[DevNode], n: int, chunksize: int, warm: int,
                    limit: float, forms: dict[str, tuple[int | None, Series]]) -> None:
    """One Executor session: start, warm every slot, then each form of map (`None`: no
    chunksize argument, the Executor's default), the load checked before each."""
    started = time.perf_counter()
    ex = batchpool.Executor(pool=POOL_NAME, config=config, name="bench-noop")
    try:
        if list(ex.map(noop, range(warm), chunksize=1)) != list(range(warm)):
            raise RuntimeError("warm-up calls returned wrong results")
        startup = time.perf_counter() - started
        for name, (size, series) in forms.items():
            series.startups.append(startup)
            series.loads.append(wait_until_quiet(name, limit))
            if size is None:
                timed_calls(n, lambda: list(ex.map(noop, range(n))), nodes, series)
            else:
                timed_calls(n, lambda s=size: list(ex.map(noop, range(n), chunksize=s)),
                            nodes, series)
            print(f"#   {name}: {series.rates[-1]:.0f} calls/s ({series.maps[-1]} map(s) "
                  f"of {n})", flush=True)
    except BaseException:
        # Ctrl-C: drop the calls not yet run rather than wait for thousands of them, but
        # wait at most 10 s: with thousands cancelled, shutdown can hang (see
        # results-issue4.md); the cluster is stopped next anyway
        stopper = threading.Thread(target=ex.shutdown, daemon=True,
                                   kwargs={"wait": True, "cancel_futures": True})
        stopper.start()
        stopper.join(10.0)
        if stopper.is_alive():
            print("# the Executor did not shut down within 10 s; stopping the cluster",
                  file=sys.stderr)
        raise
    ex.shutdown(wait=True)


# --- Dask --------------------------------------------------------------------------------

def connect_options(cluster: DevCluster, node: DevNode) -> dict[str, Any]:
    """asyncssh options for one node: its port, the cluster's key and known_hosts, and no
    ~/.ssh/config or agent, so nothing outside the dev cluster is used."""
    return {"port": node.port, "username": getpass.getuser(),
            "client_keys": [str(cluster.client_key)], "known_hosts": str(cluster.known_hosts),
            "config": None, "agent_path": None}


@contextlib.contextmanager
def dask_cluster(cluster: DevCluster, nodes: Sequence[DevNode], slots: int, tmp: Path,
                 started: Started, processes: bool) -> Iterator[Any]:
    """A Dask client on an SSHCluster over the dev nodes: scheduler on node 0, one worker
    host per node, every listener and advertised address on the node's 127.x host."""
    from distributed import Client
    from distributed.deploy.ssh import SSHCluster

    # SSHCluster logs every line its remote processes print; keep warnings only
    logging.getLogger("distributed.deploy.ssh").setLevel(logging.WARNING)
    scratch = tmp / "dask-scratch"
    scratch.mkdir(exist_ok=True)
    worker: dict[str, Any] = {"host": nodes[0].host, "local_directory": str(scratch),
                              "dashboard": False}
    if processes:
        worker.update(n_workers=slots, nthreads=1)
    else:
        worker.update(n_workers=1, nthreads=slots)
    hosts = [nodes[0].host] + [node.host for node in nodes]
    options = [connect_options(cluster, nodes[0])] + [connect_options(cluster, node)
                                                       for node in nodes]
    if len({node.host for node in nodes}) != 1:
        raise RuntimeError("SSHCluster takes one worker_options for every host: the nodes "
                           "must share one loopback address")
    ssh_cluster = None
    client = None
    try:
        ssh_cluster = SSHCluster(
            hosts, connect_options=options, worker_options=worker,
            scheduler_options={"host": nodes[0].host, "port": 0, "dashboard": False},
            remote_python=[sys.executable] * len(hosts))
        started.record(session_processes(nodes))
        client = Client(ssh_cluster)
        yield client
    finally:
        started.record(session_processes(nodes))
        with contextlib.suppress(Exception):
            if client is not None:
                client.close(timeout=10)
        with contextlib.suppress(Exception):
            if ssh_cluster is not None:
                ssh_cluster.close(timeout=10)
        started.stop()


def dask_addresses(client: Any) -> tuple[str, list[str]]:
    """(scheduler address, worker addresses), refused unless all on loopback."""
    info = client.scheduler_info()
    scheduler = str(info["address"])
    workers = sorted(str(a) for a in info["workers"])
    off = [a for a in [scheduler, *workers] if not a.startswith(LOOPBACK_PREFIX)]
    if off:
        raise RuntimeError(f"Dask addresses off loopback: {off}")
    return scheduler, workers


def dask_round(cluster: DevCluster, nodes: Sequence[DevNode], slots: int, tmp: Path,
               started: Started, n: int, warm: int, limit: float, processes: bool,
               round_: int, series: Series, seen: dict[str, Any]) -> None:
    """One Dask session: start the cluster, check addresses and worker count, warm up,
    then map + gather N calls."""
    began = time.perf_counter()
    with dask_cluster(cluster, nodes, slots, tmp, started, processes) as client:
        expected = len(nodes) * (slots if processes else 1)
        client.wait_for_workers(expected, timeout=60)
        scheduler, workers = dask_addresses(client)
        threads = sum(client.nthreads().values())
        if threads != len(nodes) * slots:
            raise RuntimeError(f"Dask has {threads} threads, batchpool {len(nodes) * slots}")
        warmed = client.gather(client.map(noop, range(warm), key=f"warm-{round_}"))
        if warmed != list(range(warm)):
            raise RuntimeError("Dask warm-up returned wrong results")
        series.startups.append(time.perf_counter() - began)
        seen.update(scheduler=scheduler, workers=workers, threads=threads)
        print(f"#   dask scheduler {scheduler}, {len(workers)} workers "
              f"({workers[0]} ...), {threads} threads", flush=True)
        series.loads.append(wait_until_quiet("dask map", limit))

        def run() -> list[int]:
            futures = client.map(noop, range(n), key=f"noop-{round_}")
            return list(client.gather(futures))

        timed_calls(n, run, nodes, series)
        print(f"#   dask: {series.rates[-1]:.0f} calls/s", flush=True)


# --- the bare worker ---------------------------------------------------------------------

BARE_WORKER = r"""
import pickle, struct, sys
head, read, out = struct.Struct("!I"), sys.stdin.buffer.read, sys.stdout.buffer
while len(size := read(4)) == 4:
    fn, args = pickle.loads(read(head.unpack(size)[0]))
    body = pickle.dumps(fn(*args))
    out.write(head.pack(len(body)) + body)
    out.flush()
"""
FRAME = struct.Struct("!I")


class _Counter:
    """The next call to hand out, shared by every worker of every node."""

    def __init__(self, n: int) -> None:
        self.next, self.n = 0, n

    def take(self) -> int | None:
        if self.next >= self.n:
            return None
        self.next += 1
        return self.next - 1


BareRun = tuple[float, float, dict[str, float], list[int]]


async def bare_workers(cluster: DevCluster, nodes: Sequence[DevNode], procs: int, n: int,
                       warm: int, window: int) -> BareRun:
    """(start-up s, calls/s, CPU us per call by side, results) of `procs` bare workers per
    node, each with up to `window` cloudpickled calls in flight: what a persistent worker
    costs at the least."""
    began = time.perf_counter()
    conns = await asyncio.gather(*(asyncssh.connect(node.host, **connect_options(cluster, node))
                                   for node in nodes))
    command = shlex.join([sys.executable, "-c", BARE_WORKER])
    try:
        workers = [await conn.create_process(command, encoding=None)
                   for conn in conns for _ in range(procs)]

        async def lane(process: Any, counter: _Counter, results: list[int]) -> None:
            free = asyncio.Semaphore(window)
            all_in = asyncio.Event()
            state = {"pending": 0, "sending": True}

            async def reader() -> None:
                while True:
                    size = FRAME.unpack(await process.stdout.readexactly(FRAME.size))[0]
                    value = cloudpickle.loads(await process.stdout.readexactly(size))
                    results[value] = value
                    state["pending"] -= 1
                    free.release()
                    if not state["sending"] and state["pending"] == 0:
                        all_in.set()

            reading = asyncio.create_task(reader())
            try:
                while (index := counter.take()) is not None:
                    await free.acquire()
                    if reading.done():  # the worker died: its exception
                        await reading
                    payload = cloudpickle.dumps((noop, (index,)))
                    process.stdin.write(FRAME.pack(len(payload)) + payload)
                    state["pending"] += 1
                state["sending"] = False
                if state["pending"]:
                    waiting = asyncio.ensure_future(all_in.wait())
                    await asyncio.wait([waiting, reading], return_when=asyncio.FIRST_COMPLETED)
                    if not waiting.done():
                        waiting.cancel()
                        await reading  # raises what stopped the reader
            finally:
                reading.cancel()

        async def run(count: int) -> list[int]:
            results = [-1] * count
            counter = _Counter(count)
            await asyncio.gather(*(lane(w, counter, results) for w in workers))
            return results

        if await run(warm) != list(range(warm)):
            raise RuntimeError("bare worker warm-up returned wrong results")
        startup = time.perf_counter() - began
        cpu = cpu_seconds(nodes)
        started = time.perf_counter()
        results = await run(n)
        rate = n / (time.perf_counter() - started)
        used = cpu_per_call(cpu, cpu_seconds(nodes), n)
        for worker in workers:
            worker.stdin.write_eof()
        return startup, rate, used, results
    finally:
        for conn in conns:
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn in conns))


def bare_round(cluster: DevCluster, nodes: Sequence[DevNode], procs: int, n: int, warm: int,
               window: int, limit: float, series: Series) -> None:
    series.loads.append(wait_until_quiet("bare worker calls", limit))
    startup, rate, cpu, results = asyncio.run(
        bare_workers(cluster, nodes, procs, n, warm, window))
    if results != list(range(n)):
        raise RuntimeError("bare workers returned wrong results")
    series.startups.append(startup)
    series.rates.append(rate)
    series.cpu.append(cpu)
    series.others.append(others_share(cpu["others"] * n / 1e6, n / rate))
    print(f"#   bare worker: {rate:.0f} calls/s", flush=True)


# --- the benchmark -------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--slots", type=int, default=len(os.sched_getaffinity(0)),
                        help="slots per node, and Dask threads per node (default: CPUs)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds, methods rotating")
    parser.add_argument("--dask-processes", action="store_true",
                        help="Dask: SLOTS 1-thread worker processes per node, not 1 process "
                             "with SLOTS threads")
    parser.add_argument("--bare-procs", type=int, default=1,
                        help="bare worker processes per node")
    parser.add_argument("--window", type=int, default=64,
                        help="bare worker: calls in flight per worker process")
    parser.add_argument("--max-load", type=float, default=1.0,
                        help="wait (up to 10 min) until the 1-minute load is at most this")
    parser.add_argument("--only", nargs="*", choices=["batchpool", "dask", "bare"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (debugging)")
    args = parser.parse_args()
    wanted = args.only or ["batchpool", "dask", "bare"]
    n, slots = args.calls, args.slots
    chunksize = max(1, n // (args.nodes * slots * 8))
    warm = args.nodes * slots * 4
    series = {"batchpool": Series(), "batchpool per call": Series(),
              "batchpool chunked": Series(), "dask": Series(), "bare worker": Series()}
    forms: dict[str, tuple[int | None, Series]] = {
        "batchpool ex.map(noop, range(N))": (None, series["batchpool"]),
        "batchpool chunksize=1": (1, series["batchpool per call"]),
        f"batchpool chunksize={chunksize}": (chunksize, series["batchpool chunked"])}
    seen: dict[str, Any] = {}

    with private_home(), dev_cluster(args.nodes, args.keep) as (cluster, tmp, started):
        os.environ.pop("BATCHPOOL_CONFIG", None)
        nodes = [node for node in cluster.status() if node.running]
        config = write_config(cluster, nodes, slots, tmp / "batchpool.toml")
        revision = batchpool_revision()
        print(f"# {len(nodes)} dev-cluster nodes on {nodes[0].host}, {slots} slots each, "
              f"{os.cpu_count()} CPUs; {n} no-op calls, chunksize {chunksize}; "
              f"batchpool {revision} from {Path(batchpool.__file__).parent}", flush=True)
        rounds: dict[str, Callable[[int], None]] = {
            "batchpool": lambda r: batchpool_round(config, nodes, n, chunksize, warm,
                                                   args.max_load, forms),
            "dask": lambda r: dask_round(cluster, nodes, slots, tmp, started, n, warm,
                                         args.max_load, args.dask_processes, r,
                                         series["dask"], seen),
            "bare": lambda r: bare_round(cluster, nodes, args.bare_procs, n, warm,
                                         args.window, args.max_load, series["bare worker"]),
        }
        for round_ in range(args.repeat):
            order = wanted[round_ % len(wanted):] + wanted[:round_ % len(wanted)]
            print(f"# round {round_ + 1}: {', '.join(order)}", flush=True)
            for name in order:
                rounds[name](round_)
                started.record(session_processes(nodes))

    check_unchanged(revision)
    print(f"# best of {args.repeat}; calls/s, steady state after start-up and warm-up")
    notes = {"batchpool": f"default map: {default_chunking()}",
             "batchpool per call": "chunksize=1",
             "batchpool chunked": f"chunksize={chunksize}",
             "dask": (f"{args.nodes}x{slots} 1-thread processes" if args.dask_processes
                      else f"{args.nodes} workers x {slots} threads"),
             "bare worker": f"{args.bare_procs} per node, window {args.window}"}
    for name, s in series.items():
        if s.rates:
            report(f"{name} ({notes[name]})", s.best, "calls/s", s.spread())
    for name in ("batchpool", "dask", "bare worker"):
        if series[name].startups:
            report(f"{name} start-up + warm-up", min(series[name].startups), "s")
    for name, s in series.items():
        cpu = s.best_cpu()
        if cpu:
            report(f"{name} CPU per call, all sides", sum(cpu.values()), "us",
                   ", ".join(f"{side} {us:.0f}" for side, us in cpu.items()))
    ratios: dict[str, float] = {}
    for name in ("dask", "bare worker"):
        theirs = series[name]
        for label in ("batchpool", "batchpool per call", "batchpool chunked"):
            mine = series[label]
            if mine.rates and theirs.rates:
                ratio = mine.best / theirs.best
                ratios[f"{label} / {name}"] = ratio
                target = ""
                if name == "dask" and label != "batchpool chunked":
                    verdict = "met" if ratio >= TARGET_VS_DASK else "NOT MET"
                    target = f"target >= {TARGET_VS_DASK:g}: {verdict}"
                report(f"ratio {label} / {name}", ratio, "x", target)
    if seen:
        print(f"# dask scheduler {seen['scheduler']}; workers {', '.join(seen['workers'])}")
    if args.json:
        args.json.write_text(json.dumps({
            "batchpool": revision, "default_map": default_chunking(),
            "nodes": args.nodes, "slots_per_node": slots, "calls": n, "chunksize": chunksize,
            "cpus": os.cpu_count(), "repeat": args.repeat, "dask_processes": args.dask_processes,
            "series": {k: s.to_json() for k, s in series.items() if s.rates},
            "ratios": ratios, "dask": seen}, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as exc:
        # The cluster is down and the temp dirs are gone by now. Exit at once: an
        # Executor stuck in shutdown (see results-issue4.md) would otherwise hold the
        # process in its exit hook forever.
        print(f"interrupted ({str(exc) or 'Ctrl-C'}); cluster stopped", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
