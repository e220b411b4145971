"""Schedules fired by a real controller service (`batchpool controller run`).

A cron expression fires at most once a minute, so the tests move a schedule's next run
into the past in the store, as the clock would, instead of waiting for it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from helpers import Batchpool, service, terminate, wait_for, write

from batchpool.store import Store

FAR = "0 0 1 1 *"   # midnight on 1 January: never due during a test by itself


def due_now(bp: Batchpool, name: str) -> None:
    with sqlite3.connect(bp.home / "batchpool.db") as db:
        db.execute("UPDATE schedules SET next_run=? WHERE name=?", (time.time() - 1, name))


def fire(bp: Batchpool, store: Store, name: str) -> int:
    """Make schedule `name` due, wait for the running service to fire it; its job."""
    due_now(bp, name)
    wait_for(lambda: store.schedule(name).last_job is not None, timeout=30,
             what=f"schedule {name} to fire")
    job = store.schedule(name).last_job
    assert job is not None
    return job


def test_the_service_fires_a_due_schedule_and_plans_the_next(bp: Batchpool,
                                                             tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", 'name = "nightly"\n[[tasks]]\nid = "a"\n'
                                        'array = "0-2"\ncommand = "echo {index}"\n')
    added = bp.json("schedule", "add", "night", "--cron", FAR, "--spec", str(spec),
                    "--tz", "UTC")
    assert added["last_job"] is None and added["next_run"] > time.time()
    store = Store(bp.home / "batchpool.db")
    with service(bp) as process:
        job = fire(bp, store, "night")
        assert bp("job", "wait", str(job), "--timeout", "60").returncode == 0
        ran_now = bp.json("schedule", "run", "night")   # and one by hand
        assert ran_now["service_running"] is True
        assert bp("job", "wait", str(ran_now["id"]), "--timeout", "60").returncode == 0
        log = terminate(process)
    listed = {row["name"]: row for row in bp.json("schedule", "list")}
    assert listed["night"]["last_job"] == ran_now["id"]
    assert listed["night"]["last_job_state"] == "succeeded"
    assert listed["night"]["next_run"] > time.time() + 3600   # next 1 January, not now
    assert f"schedule night: submitted job {job}" in log
    assert bp.json("job", "show", str(job))["name"] == "nightly"


def test_overlap_skip_leaves_out_a_fire_while_the_last_job_runs(bp: Batchpool,
                                                                tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", 'name = "slow"\n[[tasks]]\nid = "a"\n'
                                        'command = "sleep 60"\n')
    bp("schedule", "add", "slow", "--cron", FAR, "--spec", str(spec), "--overlap", "skip",
       check=True)
    store = Store(bp.home / "batchpool.db")
    with service(bp) as process:
        first = fire(bp, store, "slow")
        wait_for(lambda: store.tasks(first, states=("running",)), what="its task to run")
        due_now(bp, "slow")
        wait_for(lambda: store.schedule("slow").next_run > time.time(), timeout=30,
                 what="the second fire to be handled")
        assert store.schedule("slow").last_job == first   # no second job
        assert [job.id for job in store.jobs()] == [first]
        bp("job", "cancel", str(first), check=True)
        log = terminate(process)
    assert "schedule slow: skipped: the previous job is still running" in log


def test_schedule_add_refuses_bad_input_with_status_2(bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", 'name = "x"\n[[tasks]]\nid = "a"\ncommand = "true"\n')
    for args, message in (
            (("--cron", "0 2 * *"), "has 4 field(s)"),
            (("--cron", "0 0 31 2 *"), "never matches a date"),
            (("--cron", "0 2 * * *", "--tz", "Mars/Olympus"), "unknown time zone"),
            (("--cron", "0 2 * * *", "--pool", "nowhere"), "no pool named 'nowhere'")):
        result = bp("schedule", "add", "nightly", *args, "--spec", str(spec))
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    bp("schedule", "add", "nightly", "--cron", "0 2 * * *", "--spec", str(spec), check=True)
    again = bp("schedule", "add", "nightly", "--cron", "0 3 * * *", "--spec", str(spec))
    assert again.returncode == 2 and "exists; remove it first" in again.stderr
    assert bp("schedule", "run", "nope").returncode == 2
    assert bp("schedule", "remove", "nightly").returncode == 0
    assert bp("schedule", "remove", "nightly").returncode == 2
    assert bp.json("schedule", "list") == []
