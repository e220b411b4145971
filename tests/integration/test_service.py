"""`batchpool submit` and `batchpool controller run`, as separate real processes.

The service is started as a user starts it and stopped with SIGTERM (a graceful stop)
or SIGKILL of its process group (a crash, which takes its local agent along); whatever
happens, `stop` kills the group at the end of the test.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from helpers import Batchpool, dev_pool_config, service, terminate, wait_for, write

from batchpool.devcluster import DevCluster
from batchpool.store import Store


def submit(bp: Batchpool, spec: Path, *args: str) -> int:
    result = bp("submit", str(spec), *args, check=True)
    return int(result.stdout)


def test_submitted_jobs_wait_for_the_service_then_share_its_pool(bp: Batchpool,
                                                                 tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", """
name = "squares"
[[tasks]]
id = "sq"
array = "0-7"
command = "echo $(( {index} * {index} ))"
""")
    queued = bp("submit", str(spec), check=True)
    assert queued.stdout == "1\n"
    assert "no controller service is running" in queued.stderr
    assert bp.json("job", "show", "1")["state"] == "queued"
    with service(bp) as process:
        assert bp("job", "wait", "1", "--timeout", "60").returncode == 0
        second = bp.json("submit", str(spec))
        assert second["id"] == 2 and second["service_running"] is True
        assert bp("job", "wait", "2", "--timeout", "60").returncode == 0
        refused = bp("controller", "run")
        assert refused.returncode == 2
        assert f"a controller service (pid {process.pid}) already runs" in refused.stderr
        log = terminate(process)
    assert bp.json("job", "logs", "2", "sq[7]")["stdout"] == "49\n"
    assert "job 1 (squares): took for pool local" in log
    assert "job 2 (squares): succeeded: 8/8 succeeded, 0 failed" in log
    assert log.count("pool local: starting its nodes") == 1   # job 2 found the pool up
    assert "controller service stopped" in log


def test_submit_wakes_the_service_and_can_wait_for_the_job(bp: Batchpool,
                                                           tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", 'name = "quick"\n[[tasks]]\nid = "a"\n'
                                        'command = "echo hi"\n')
    # polling every 60 s, and its pool's controller looking once a second, the service
    # takes these jobs at once only because `submit` wakes it
    with service(bp, "--poll", "60") as process:
        first = bp("submit", str(spec), "--wait", timeout=30)
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == ["1", "job 1: succeeded"]
        for _ in range(3):   # the pool is up now: its controller is woken
            later = bp.json("submit", str(spec), "--wait", timeout=30)
            assert later["state"] == "succeeded" and later["succeeded"] == 1
        terminate(process)
    store = Store(bp.home / "batchpool.db")
    waits = [job.started - job.submitted for job in map(store.job, range(1, 5))
             if job.started is not None]
    assert len(waits) == 4 and max(waits) < 0.25, waits


def test_a_job_that_cannot_be_started_fails_alone(bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", 'name = "fine"\n[[tasks]]\nid = "a"\n'
                                        'array = "0-3"\ncommand = "true"\n')
    good, bad = submit(bp, spec), submit(bp, spec)
    with sqlite3.connect(bp.home / "batchpool.db") as db:   # as if written by a future version
        db.execute("UPDATE jobs SET spec='{\"name\": 1}' WHERE id=?", (bad,))
    with service(bp) as process:
        assert bp("job", "wait", str(good), "--timeout", "60").returncode == 0
        assert bp("job", "wait", str(bad), "--timeout", "60").returncode == 1
        terminate(process)
    shown = bp.json("job", "show", str(bad))
    assert shown["state"] == "failed" and shown["reason"].startswith("could not start"), shown


def test_cancel_reaches_a_job_the_service_runs(bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", 'name = "long"\n[[tasks]]\nid = "nap"\n'
                                        'array = "0-5"\ncommand = "sleep 60"\n')
    job = submit(bp, spec)
    store = Store(bp.home / "batchpool.db")
    with service(bp) as process:
        wait_for(lambda: store.tasks(job, states=("running",)), what="a task to start")
        assert bp("job", "cancel", str(job)).returncode == 0
        started = time.monotonic()
        assert bp("job", "wait", str(job), "--timeout", "30").returncode == 1
        assert time.monotonic() - started < 15
        terminate(process)
    shown = bp.json("job", "show", str(job))
    assert shown["state"] == "cancelled" and shown["running"] == 0, shown


def test_a_crashed_service_s_job_is_adopted_without_rerunning_finished_tasks(
        bp: Batchpool, tmp_path: Path) -> None:
    runs = tmp_path / "runs.log"
    spec = write(tmp_path / "job.toml", f"""
name = "adoptable"
[[tasks]]
id = "step"
array = "0-29"
command = "echo {{index}} >> {runs}; sleep 0.2"
""")
    job = submit(bp, spec)
    with service(bp) as first:
        wait_for(lambda: runs.exists() and len(runs.read_text().split()) >= 8,
                 what="some tasks to run")
        os.killpg(first.pid, signal.SIGKILL)   # the service and its local agent
        first.wait(timeout=10)
    store = Store(bp.home / "batchpool.db")
    assert store.job(job).state == "running"
    done_before = {t.task_id for t in store.tasks(job, states=("succeeded",))}
    assert done_before
    with service(bp) as second:
        assert bp("job", "wait", str(job), "--timeout", "120").returncode == 0
        log = terminate(second)
    assert f"job {job} (adoptable): adopted for pool local" in log
    counts: dict[str, int] = {}
    for index in runs.read_text().split():
        counts[f"step[{index}]"] = counts.get(f"step[{index}]", 0) + 1
    assert set(counts) == {f"step[{i}]" for i in range(30)}
    assert all(counts[task] == 1 for task in done_before), counts


def test_jobs_for_a_pool_the_service_does_not_know_fail_with_the_reason(
        bp: Batchpool, tmp_path: Path) -> None:
    config = write(tmp_path / "elsewhere.toml", '[pools.far]\nhosts = ["127.0.0.9"]\n')
    spec = write(tmp_path / "job.toml", 'name = "lost"\n[[tasks]]\nid = "a"\ncommand = "true"\n')
    job = submit(bp, spec, "--pool", "far", "--config", str(config))
    with service(bp) as process:
        assert bp("job", "wait", str(job), "--timeout", "30").returncode == 1
        terminate(process)
    shown = bp.json("job", "show", str(job))
    assert shown["state"] == "failed"
    assert "no pool named 'far'" in shown["reason"]


def test_submit_refuses_a_bad_spec_and_queues_nothing(bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "bad.toml", 'name = "x"\n[[tasks]]\nid = "a"\ncommand = "true"\n'
                                        'array = "5-1"\n')
    result = bp("submit", str(spec))
    assert result.returncode == 2
    assert "bad.toml:5" in result.stderr and "tasks[0].array" in result.stderr
    assert bp.json("job", "list") == []


@pytest.mark.ssh
def test_the_service_runs_jobs_on_an_ssh_pool_and_lets_it_go_when_idle(
        bp: Batchpool, tmp_path: Path, dev_cluster: DevCluster) -> None:
    config = dev_pool_config(dev_cluster, tmp_path, idle_timeout="1s")
    spec = write(tmp_path / "job.toml", """
name = "where"
[[tasks]]
id = "host"
array = "0-11"
command = "echo $BATCHPOOL_NODE; sleep 0.3"
""")
    with service(bp, "--config", str(config)) as process:
        first = submit(bp, spec, "--config", str(config))
        assert bp("job", "wait", str(first), "--timeout", "120").returncode == 0
        wait_for(lambda: _states(bp) == {"offline"}, timeout=30,
                 what="the idle pool's nodes to be shut down")
        second = submit(bp, spec, "--config", str(config))
        assert bp("job", "wait", str(second), "--timeout", "120").returncode == 0
        log = terminate(process)
    nodes = {bp.json("job", "logs", str(first), f"host[{i}]")["node"] for i in range(12)}
    assert len(nodes) >= 2, nodes   # the tasks were spread over the pool
    assert log.count("pool dev: idle, its nodes are shut down") >= 1
    assert log.count("pool dev: starting its nodes") == 2
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and
                 str(tmp_path).encode() in _cmdline(pid)]
    wait_for(lambda: not [p for p in leftovers if _cmdline(p)], timeout=10,
             what="the nodes' agents to exit")


def _states(bp: Batchpool) -> set[str]:
    return {node["state"] for node in bp.json("node", "list", "--pool", "dev")}


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
