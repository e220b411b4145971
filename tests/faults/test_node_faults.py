"""Real faults on a real SSH pool: a node killed or frozen mid-job, the controller killed.

Each test brings up its own 3-node dev cluster (real OpenSSH sshd daemons on loopback,
see conftest.py) and always tears it down. Faults are injected on the node's real
processes: `kill -9` / `SIGSTOP` of its sshd and every descendant (the session, the
node agent, its tasks), and `SIGKILL` of the `batchpool run` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Batchpool, wait_for, write

from batchpool.store import Store
from faults.conftest import FaultCluster, comm, wait_dead

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

TASKS = 30


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Kill the spawned CLI's process group if it still runs; its (stdout, stderr)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    out, err = process.communicate()
    return out or "", err or ""


def _lines(path: Path) -> list[list[str]]:
    try:
        return [line.split() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def _long_sleeps(path: Path) -> list[int]:
    """Pids of the 60 s sleeps logged as `PID 60` (a line being written is skipped)."""
    return [int(line[0]) for line in _lines(path) if line[1:] == ["60"]]


def _sleep_job(tmp_path: Path, log: Path) -> Path:
    """30 tasks of `sleep 1` that log their start and end, and count no retries."""
    return write(tmp_path / "job.toml", f"""
name = "sleepers"
[defaults]
max_attempts = 1
timeout = "2m"
[[tasks]]
id = "nap"
array = "0-{TASKS - 1}"
command = '''
echo start {{index}} $BATCHPOOL_ATTEMPT $BATCHPOOL_NODE >> {log}
sleep 1
echo end {{index}} $BATCHPOOL_ATTEMPT $BATCHPOOL_NODE >> {log}'''
""")


def _in_flight(log: Path, node: str) -> set[str]:
    """Tasks whose attempt on `node` logged its start but not its end."""
    started = {(i, a) for kind, i, a, n in _lines(log) if kind == "start" and n == node}
    ended = {(i, a) for kind, i, a, n in _lines(log) if kind == "end" and n == node}
    return {f"nap[{i}]" for i, _ in started - ended}


def _run_with_fault(bp: Batchpool, faulty: FaultCluster, tmp_path: Path,
                    inject: Callable[[FaultCluster], tuple[str, set[str]]]) -> str:
    """Run the sleep job, inject a fault once a third of it is done, check the result.

    `inject` returns the faulty node's name and the tasks it was running at that
    moment. Returns the faulty node's name.
    """
    log = tmp_path / "runs.log"
    spec = _sleep_job(tmp_path, log)
    config = faulty.write_config(tmp_path / "batchpool.toml", heartbeat_timeout="3s")
    run = bp.spawn("run", str(spec), "--pool", "dev", "--config", str(config),
                   "--retry-backoff", "0.1")
    out = err = ""
    try:
        wait_for(lambda: sum(1 for line in _lines(log) if line[0] == "end") >= 8,
                  timeout=60, what="8 tasks done")
        victim, in_flight = inject(faulty)
        assert in_flight, "the faulty node was running no task when the fault hit"
        started = time.monotonic()
        run.wait(timeout=120)
        elapsed = time.monotonic() - started
        out, err = _stop(run)
    finally:
        if run.poll() is None:
            out, err = _stop(run)
    assert run.returncode == 0, f"batchpool run exited {run.returncode}\n{out}\n{err}"
    print(f"\njob finished {elapsed:.1f}s after the fault on {victim}; "
          f"in flight there: {sorted(in_flight)}")

    report = bp.json("job", "show", "1")
    assert report["state"] == "succeeded", report
    assert report["succeeded"] == TASKS and report["failed"] == 0, report

    store = Store(bp.home / "batchpool.db")
    attempts = store.attempts(1)
    succeeded = Counter(a.task_id for a in attempts if a.state == "succeeded")
    assert succeeded == Counter({f"nap[{i}]": 1 for i in range(TASKS)}), \
        "each task must have exactly one succeeded attempt"
    lost = [a for a in attempts if a.state == "lost"]
    assert {a.node for a in lost} == {victim}, [(a.task_id, a.node, a.state) for a in lost]
    lost_tasks = {a.task_id for a in lost}
    assert in_flight <= lost_tasks, (
        f"attempts running on {victim} when it failed must be recorded lost: "
        f"in flight {sorted(in_flight)}, lost {sorted(lost_tasks)}")
    for attempt in attempts:
        if attempt.state == "succeeded" and attempt.task_id in lost_tasks:
            assert attempt.node != victim
    assert all(a.state in ("succeeded", "lost") for a in attempts), \
        [(a.task_id, a.attempt, a.state, a.reason) for a in attempts
         if a.state not in ("succeeded", "lost")]
    # max_attempts = 1: a lost attempt did not count, or the task would have failed
    for task in store.tasks(1):
        assert task.state == "succeeded"
        if task.task_id in lost_tasks:
            assert task.attempts == 1 and task.lost >= 1, task

    nodes = {n["name"]: n for n in bp.json("node", "list", "--pool", "dev")}
    assert nodes[victim]["state"] == "unreachable", nodes[victim]
    assert nodes[victim]["reason"], nodes[victim]
    return victim


def test_kill_9_one_node_mid_job(bp: Batchpool, faulty: FaultCluster, tmp_path: Path) -> None:
    def inject(cluster: FaultCluster) -> tuple[str, set[str]]:
        node, pids = cluster.freeze_busy_node()
        in_flight = _in_flight(tmp_path / "runs.log", node.address)
        assert any(comm(p) == "sleep" for p in pids)
        cluster.kill(node)  # asserts that every frozen pid is gone
        return node.address, in_flight

    victim = _run_with_fault(bp, faulty, tmp_path, inject)
    assert not faulty.cluster.status()[faulty.nodes.index(faulty.node(victim))].running


def test_sigstop_one_node_mid_job(bp: Batchpool, faulty: FaultCluster,
                                  tmp_path: Path) -> None:
    def inject(cluster: FaultCluster) -> tuple[str, set[str]]:
        node, _ = cluster.freeze_busy_node()  # continued by the fixture's finalizer
        return node.address, _in_flight(tmp_path / "runs.log", node.address)

    victim = _run_with_fault(bp, faulty, tmp_path, inject)
    nodes = {n["name"]: n for n in bp.json("node", "list", "--pool", "dev")}
    assert "heartbeat" in nodes[victim]["reason"], nodes[victim]


def test_controller_killed_mid_job_then_resume(bp: Batchpool, faulty: FaultCluster,
                                               tmp_path: Path) -> None:
    runs = tmp_path / "runs.log"
    sleeps = tmp_path / "sleeps.log"
    duration = tmp_path / "duration"
    duration.write_text("0.3\n")
    spec = write(tmp_path / "job.toml", f"""
name = "resumable"
[defaults]
max_attempts = 1
[[tasks]]
id = "step"
array = "0-{TASKS - 1}"
command = "d=$(cat {duration}); echo {{index}} >> {runs}; sleep $d & echo $! $d >> {sleeps}; wait"
""")
    config = faulty.write_config(tmp_path / "batchpool.toml", heartbeat_timeout="3s")
    store = Store(bp.home / "batchpool.db")
    run = bp.spawn("run", str(spec), "--pool", "dev", "--config", str(config),
                   "--retry-backoff", "0.1")
    try:
        wait_for(lambda: store.path.exists() and len(store.tasks(1, ("succeeded",))) >= 6,
                  timeout=60, what="6 tasks succeeded")
        duration.write_text("60\n")  # from now on tasks run long: they are in flight
        wait_for(lambda: len(_long_sleeps(sleeps)) >= 3,
                  timeout=30, what="3 long tasks running")
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
    finally:
        _stop(run)
    long_sleeps = _long_sleeps(sleeps)
    assert long_sleeps
    started = time.monotonic()
    left = wait_dead(long_sleeps, 5)
    assert not left, (f"the node agents did not kill their tasks within 5 s of losing the "
                      f"controller: {left} still alive")
    print(f"\ntasks killed {time.monotonic() - started:.2f}s after the controller died")
    # the agents and their SSH sessions are gone too: only the sshd listeners remain
    leftovers = {node.address: [(p, comm(p)) for p in faulty.tree(node)[1:]]
                 for node in faulty.nodes}
    wait_for(lambda: all(len(faulty.tree(n)) == 1 for n in faulty.nodes), timeout=5,
              what=f"node agents and sessions gone (were {leftovers})")

    before = bp.json("job", "show", "1")
    assert before["state"] == "running", before
    done_before = {t.task_id for t in store.tasks(1, ("succeeded",))}
    running_before = {t.task_id for t in store.tasks(1, ("running",))}
    assert done_before and running_before

    duration.write_text("0.1\n")
    resumed = bp("job", "resume", "1", "--config", str(config), "--retry-backoff", "0.1",
                 timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = bp.json("job", "show", "1")
    assert after["state"] == "succeeded" and after["succeeded"] == TASKS, after

    counts = Counter(f"step[{line[0]}]" for line in _lines(runs))
    assert set(counts) == {f"step[{i}]" for i in range(TASKS)}
    rerun = sorted(t for t in done_before if counts[t] != 1)
    assert not rerun, f"succeeded tasks were run again after resume: {rerun}"
    attempts = store.attempts(1)
    succeeded = Counter(a.task_id for a in attempts if a.state == "succeeded")
    assert succeeded == Counter({f"step[{i}]": 1 for i in range(TASKS)})
    lost = {a.task_id for a in attempts if a.state == "lost"}
    assert running_before <= lost, (sorted(running_before), sorted(lost))
