"""Errors and half-finished states, end to end: bad pools are refused before anything is
recorded, a job whose `batchpool run` died can still be cancelled, `job outputs` copes
with directories and copy failures, config errors are precise."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import Batchpool, stop, wait_for, write

from batchpool.config import PoolConfig
from batchpool.controller import owner_id
from batchpool.errors import ConfigError
from batchpool.runner import run_jobs
from batchpool.spec import load_spec
from batchpool.store import Store

JOB = 'name = "j"\n[[tasks]]\nid = "a"\ncommand = "true"\n'


def _spec(tmp_path: Path) -> str:
    return str(write(tmp_path / "job.toml", JOB))


# -- 1. a pool that cannot work is refused before the job is recorded ----------------------

@pytest.mark.parametrize(("config", "where"), [
    ('[pools.lab]\nprovider = "static"\n', ":1: pools.lab.hosts: pool 'lab' has provider "
                                           '"static" but no hosts'),
    ('# pools\n[pools.lab]\nhosts = [\n  "node1",\n  "bad host",\n]\n',
     ":5: pools.lab.hosts[1]: bad host 'bad host'"),
])
def test_unusable_pool_is_refused_before_the_job_is_recorded(bp: Batchpool, tmp_path: Path,
                                                            config: str, where: str) -> None:
    cfg = write(tmp_path / "bp.toml", config)
    result = bp("run", _spec(tmp_path), "--pool", "lab", "--config", str(cfg), timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"error: {cfg}{where}" in result.stderr
    assert "Traceback" not in result.stderr
    assert bp.json("job", "list") == []


def test_command_provider_is_refused_at_load(bp: Batchpool, tmp_path: Path) -> None:
    cfg = write(tmp_path / "bp.toml", '[pools.burst]\nprovider = "command"\n'
                                      'names = "vm[01-16]"\n')
    result = bp("run", _spec(tmp_path), "--pool", "burst", "--config", str(cfg), timeout=60)
    assert result.returncode == 2
    assert (f'error: {cfg}:2: pools.burst.provider: provider "command" is not implemented '
            "yet") in result.stderr
    assert bp.json("job", "list") == []
    assert bp("pool", "list", "--config", str(cfg)).returncode == 2


def test_error_before_the_controller_starts_fails_the_job(bp: Batchpool,
                                                          tmp_path: Path) -> None:
    """A pool that only fails inside the controller (no pre-check here) ends the job."""
    store = Store(bp.home / "batchpool.db")
    job_id = store.submit(load_spec(_spec(tmp_path)), "lab", state="running",
                          owner=owner_id())
    broken = PoolConfig(name="lab", provider="static")  # no hosts
    with pytest.raises(ConfigError, match="no hosts"):
        asyncio.run(run_jobs(store, broken, [job_id]))
    job = store.job(job_id)
    assert job.state == "failed" and job.owner is None
    assert job.reason == "could not start: pool 'lab' has provider \"static\" but no hosts"
    assert store.counts(job_id)["a"]["failed"] == 1


# -- 2. cancelling a job whose run was killed ------------------------------------------------

def _orphan(bp: Batchpool, tmp_path: Path) -> int:
    """Start `batchpool run` on six long tasks, SIGKILL it; returns its (reaped) pid."""
    pids = tmp_path / "pids"
    spec = write(tmp_path / "job.toml", f"""
name = "orphan"
[[tasks]]
id = "sleepy"
array = "0-5"
command = "echo $$ >> {pids}; sleep 300"
""")
    run = bp.spawn("run", str(spec))
    try:
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) >= 1)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)  # reaped: the owner pid is gone, not a zombie
    finally:
        stop(run)
    assert bp.json("job", "show", "1")["state"] == "running"
    return run.pid


def test_cancel_finishes_a_job_whose_run_was_sigkilled(bp: Batchpool, tmp_path: Path) -> None:
    _orphan(bp, tmp_path)
    started = time.monotonic()
    cancelled = bp("job", "cancel", "1", timeout=60)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == "job 1: cancelled"
    assert time.monotonic() - started < 30
    report = bp.json("job", "show", "1")
    assert report["state"] == "cancelled" and report["reason"] == "cancelled by user"
    assert report["cancelled"] == 6 and report["running"] == 0 and report["queued"] == 0
    assert report["owner"] is None
    assert bp("job", "wait", "1", "--timeout", "10").returncode == 1


def test_resume_on_a_bad_pool_leaves_the_job_as_it_was(bp: Batchpool, tmp_path: Path) -> None:
    pid = _orphan(bp, tmp_path)
    bad = write(tmp_path / "bad.toml", '[pools.lab]\nhosts = ["x y"]\n')
    resumed = bp("job", "resume", "1", "--pool", "lab", "--config", str(bad), timeout=60)
    assert resumed.returncode == 2
    assert f"error: {bad}:2: pools.lab.hosts[0]: bad host 'x y'" in resumed.stderr
    job = Store(bp.home / "batchpool.db").job(1)
    assert job.state == "running" and job.pool == "local"
    assert job.owner is not None and job.owner.startswith(f"{pid}@")  # not claimed
    bp("job", "cancel", "1", check=True)


def test_cancel_judges_another_hosts_owner_by_its_heartbeat(bp: Batchpool,
                                                            tmp_path: Path) -> None:
    store = Store(bp.home / "batchpool.db")
    spec = load_spec(_spec(tmp_path))
    fresh = store.submit(spec, "local", state="running", owner="4242@elsewhere")
    stale = store.submit(spec, "local", state="running", owner="4243@elsewhere")
    with sqlite3.connect(bp.home / "batchpool.db") as db:
        db.execute("UPDATE jobs SET owner_seen=? WHERE id=?", (time.time() - 60, stale))

    live = bp("job", "cancel", str(fresh), check=True)
    assert "cancel requested; 4242@elsewhere will stop it" in live.stdout
    assert store.job(fresh).state == "running" and store.job(fresh).cancel_requested

    gone = bp("job", "cancel", str(stale), check=True)
    assert gone.stdout.strip() == f"job {stale}: cancelled"
    assert store.job(stale).state == "cancelled"


# -- 3. job outputs --dest with directories and failures ----------------------------------

def test_outputs_dest_copies_directories_and_reports_failures(bp: Batchpool,
                                                              tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", """
name = "tree"
[[tasks]]
id = "a"
command = "mkdir -p results/sub && echo 1 > results/x.txt && echo 2 > results/sub/y.txt"
outputs = ["results/**"]
""")
    bp("run", str(spec), check=True)
    # Record the directory itself as the output, whatever the agent lists for the glob.
    with sqlite3.connect(bp.home / "batchpool.db") as db:
        db.execute("UPDATE attempts SET outputs=? WHERE job_id=1", (json.dumps(["results"]),))

    out = tmp_path / "out"
    result = bp("job", "outputs", "1", "--dest", str(out), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"copied 2 file(s) to {out}"
    assert (out / "a" / "results" / "x.txt").read_text() == "1\n"
    assert (out / "a" / "results" / "sub" / "y.txt").read_text() == "2\n"

    blocked = tmp_path / "blocked"
    (blocked / "a" / "results" / "x.txt").mkdir(parents=True)  # a directory in the way
    result = bp("job", "outputs", "1", "--dest", str(blocked), "--json", timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: cannot copy a/results: ")
    assert "x.txt" in result.stderr
    assert json.loads(result.stdout) == [str(blocked / "a" / "results" / "sub" / "y.txt")]
    assert (blocked / "a" / "results" / "sub" / "y.txt").is_file()


def test_outputs_of_an_unknown_job_is_an_error(bp: Batchpool, tmp_path: Path) -> None:
    result = bp("job", "outputs", "7", "--dest", str(tmp_path / "o"))
    assert result.returncode == 2 and "no job 7" in result.stderr


# -- 4. config errors --------------------------------------------------------------------------

def test_missing_batchpool_config_names_the_variable(bp: Batchpool, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    env = {**bp.env, "BATCHPOOL_CONFIG": str(missing)}
    result = subprocess.run(bp.command("pool", "list"), env=env, cwd=bp.cwd,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: $BATCHPOOL_CONFIG names {missing}, which does "
                                     "not exist")


def test_undefined_default_pool_is_refused_at_load(bp: Batchpool, tmp_path: Path) -> None:
    cfg = write(tmp_path / "bp.toml", '\ndefault_pool = "gpu"\n')
    result = bp("run", _spec(tmp_path), "--config", str(cfg), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {cfg}:2: default_pool: no pool named 'gpu' "
                                     "(known pools: local)")
    assert bp.json("job", "list") == []


