"""Fault-injection fixtures: every test gets a dev cluster of its own, and real faults.

Faults are injected for real on the node's processes, found through /proc: the node's
sshd listener and every descendant of it (session processes, the node agent, the
tasks the agent started). Every process a test freezes is continued and every node is
stopped in the finalizer, even when the test fails; a last sweep kills, by pid, any
process left whose working directory or command line lies under the test's tmp_path
(orphaned tasks of a killed agent would be those).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import write

from batchpool.devcluster import (
    DevCluster,
    DevClusterError,
    DevNode,
    descendants,
    find_sshd,
    pid_alive,
    to_toml,
)


def _state(pid: int) -> str | None:
    """The one-letter state of `pid` from /proc (None when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()[0]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def wait_dead(pids: Sequence[int], timeout: float) -> list[int]:
    """The pids of `pids` still alive (zombies count as dead) after up to `timeout` s."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def processes_under(root: Path) -> list[int]:
    """Live processes (not this one, nor its ancestors) whose cwd or cmdline is under root."""
    mine = {os.getpid()}
    pid = os.getpid()
    while pid > 1:  # our ancestors, just in case one of them lives under root
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
            pid = int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            break
        mine.add(pid)
    found = []
    prefix = str(root)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        pid = int(entry.name)
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if (cwd.startswith(prefix) or prefix in cmdline(pid)) and pid_alive(pid):
            found.append(pid)
    return found


def kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        for sig in (signal.SIGKILL, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


@dataclass
class FaultCluster:
    """A dev cluster of its own under `root`, plus the faults a test injected into it."""

    root: Path
    cluster: DevCluster = field(init=False)
    nodes: list[DevNode] = field(default_factory=list)
    frozen: list[int] = field(default_factory=list)    # SIGSTOPped pids, to SIGCONT
    killed: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cluster = DevCluster(self.root / "dc")

    def up(self, n: int = 3) -> list[DevNode]:
        self.nodes = self.cluster.up(n)
        assert all(node.running and node.pid for node in self.nodes)
        return self.nodes

    def write_config(self, path: Path, **settings: object) -> Path:
        """A batchpool.toml with the pool "dev" for these nodes, plus `settings`."""
        table = {**self.cluster.pool_config(self.nodes), **settings}
        return write(path, to_toml({"default_pool": "dev"}, {"pools.dev": table}))

    def node(self, name: str) -> DevNode:
        """A node by its pool name (its address, 127.0.0.1:PORT)."""
        for node in self.nodes:
            if node.address == name:
                return node
        raise KeyError(name)

    def tree(self, node: DevNode) -> list[int]:
        assert node.pid is not None
        return [node.pid, *descendants(node.pid)]

    def freeze(self, node: DevNode) -> list[int]:
        """SIGSTOP the node's sshd and all its descendants, until no new process shows up.

        A signalled process stops asynchronously, so each round waits until every
        process of the round is really stopped before looking for children it forked.
        """
        done: list[int] = []
        while True:
            new = [p for p in self.tree(node) if p not in done]
            if not new:
                return done
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                self.frozen.append(pid)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(
                    _state(p) not in (None, "T", "t", "Z", "X") for p in new):
                time.sleep(0.005)
            done += new

    def thaw(self, pids: Sequence[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def kill(self, node: DevNode) -> list[int]:
        """kill -9 the node's sshd and its whole process tree (frozen first: nothing escapes)."""
        pids = self.freeze(node)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.killed += pids
        left = wait_dead(pids, 10)
        assert not left, f"could not kill {left}"
        return pids

    def freeze_busy_node(self, timeout: float = 30) -> tuple[DevNode, list[int]]:
        """Freeze a node that is running at least one `sleep` task right now.

        Each node is frozen in turn; one without a running `sleep` is thawed again.
        Returns the node and its frozen pids.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                pids = self.freeze(node)
                if any(comm(p) == "sleep" for p in pids):
                    return node, pids
                self.thaw(pids)
            time.sleep(0.05)
        raise AssertionError("no node was running a sleep task")

    def cleanup(self) -> None:
        """Continue what was frozen, stop the nodes, kill leftovers under root (by pid)."""
        self.thaw(self.frozen)
        try:
            self.cluster.down()
        finally:
            leftovers = processes_under(self.root)
            kill_pids(leftovers)
            wait_dead(leftovers, 10)


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[FaultCluster]:
    """A 3-node dev cluster of this test's own (not the session's), always torn down."""
    try:
        find_sshd()
    except DevClusterError as exc:
        pytest.skip(f"needs OpenSSH sshd: {exc}")
    cluster = FaultCluster(tmp_path)
    try:
        cluster.up(3)
        yield cluster
    finally:
        cluster.cleanup()
