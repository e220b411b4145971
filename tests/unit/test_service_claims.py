"""The controller service's choices (pure) and its store-side steps on a real SQLite file."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from batchpool.config import Config, PoolConfig, local_pool
from batchpool.errors import BatchpoolError, NotFound
from batchpool.service import Service, claimable
from batchpool.service_lock import ServiceLock
from batchpool.spec import JobSpec
from batchpool.spec.model import EXECUTOR_CALL
from batchpool.store import JobRow, Store

NOW = 1_000.0
HOST = "node-a"


def row(job_id: int, state: str = "queued", priority: int = 0, owner: str | None = None,
        seen: float | None = None, submitted: float | None = None) -> JobRow:
    return JobRow(id=job_id, name=f"j{job_id}", pool="local", state=state, reason=None,
                  priority=priority, submitted=submitted if submitted is not None else job_id,
                  started=None, finished=None, owner=owner, owner_seen=seen,
                  cancel_requested=False, spec_file=None, spec_json="{}")


def pick(jobs: list[JobRow], gone: frozenset[str] = frozenset()) -> list[int]:
    return [job.id for job in claimable(jobs, f"1@{HOST}", NOW, stale_after=10.0,
                                        gone=gone.__contains__, host=HOST)]


def test_queued_jobs_are_taken_by_priority_then_age() -> None:
    jobs = [row(1), row(2, priority=5), row(3, priority=5, submitted=0.5), row(4, priority=-1)]
    assert pick(jobs) == [3, 2, 1, 4]


def test_a_running_job_is_adopted_only_when_its_controller_has_gone() -> None:
    jobs = [
        row(1, "running", owner=f"7@{HOST}", seen=NOW),          # alive here
        row(2, "running", owner=f"8@{HOST}", seen=NOW),          # dead here
        row(3, "running", owner=f"9@{HOST}", seen=NOW - 60),     # here, silent but alive
        row(4, "running", owner="5@elsewhere", seen=NOW - 60),   # elsewhere, silent
        row(5, "running", owner="6@elsewhere", seen=NOW - 1),    # elsewhere, recent
        row(6, "running", owner=None),                            # released
        row(7, "running", owner=f"1@{HOST}", seen=NOW - 60),     # the service's own
    ]
    assert pick(jobs, gone=frozenset({f"8@{HOST}"})) == [2, 4, 6]


def _spec(name: str, executor: bool = False) -> JobSpec:
    group = ({"id": "calls", "call": EXECUTOR_CALL, "array": "0-9"} if executor
             else {"id": "a", "command": "true"})
    return JobSpec.model_validate({"name": name, "tasks": [group]})


def _service(store: Store, announced: list[str]) -> Service:
    return Service(store, Config(pools={"local": local_pool()}), announce=announced.append)


def test_claims_jobs_of_idle_pools_and_fails_the_ones_no_pool_can_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "batchpool.db")
    queued = store.submit(_spec("ok"), "local")
    stray = store.submit(_spec("stray"), "gone-pool")
    dead_owner = f"{2**22 + 1}@{os.uname().nodename}"   # above pid_max: never alive
    orphan = store.submit(_spec("orphan"), "local", state="running", owner=dead_owner)
    session = store.submit(_spec("session", executor=True), "local", state="running",
                           owner=dead_owner)
    announced: list[str] = []
    service = _service(store, announced)
    assert service._claim(["local"], fail_strays=True) == {"local": [queued, orphan]}
    assert store.job(queued).owner == service.owner == store.job(orphan).owner
    assert store.job(stray).state == "failed"
    assert "no pool named 'gone-pool'" in (store.job(stray).reason or "")
    assert store.job(session).state == "failed"
    assert "Executor process has gone" in (store.job(session).reason or "")
    assert any("adopted" in line and f"job {orphan}" in line for line in announced)
    assert service._claim(["local"], fail_strays=True) == {}   # nothing is taken twice


def test_a_busy_pool_leaves_its_jobs_to_its_controller(tmp_path: Path) -> None:
    store = Store(tmp_path / "batchpool.db")
    job = store.submit(_spec("later"), "local")
    service = _service(store, [])
    assert service._claim([], fail_strays=True) == {}
    assert store.job(job).state == "queued"


def test_one_service_per_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "batchpool.db")
    first, second = ServiceLock(store), ServiceLock(store)
    assert not second.held_elsewhere()
    with first.held():
        assert second.held_elsewhere()
        with pytest.raises(BatchpoolError, match=f"pid {os.getpid()}"):
            second.acquire()
    assert not second.held_elsewhere()
    second.acquire()
    second.release()


def test_a_controller_that_fails_fails_its_jobs(tmp_path: Path) -> None:
    store = Store(tmp_path / "batchpool.db")
    job = store.submit(_spec("doomed"), "lab")
    announced: list[str] = []
    lab = PoolConfig(name="lab", provider="static", hosts=())  # plans no node: run raises
    service = Service(store, Config(pools={"lab": lab}), announce=announced.append)

    async def until_it_ends() -> None:
        await service.turn()
        await asyncio.wait([service.runs["lab"].task], timeout=30)
        await service.turn()

    asyncio.run(until_it_ends())
    assert not service.runs
    assert store.job(job).state == "failed"
    assert "controller failed: pool 'lab' has provider" in (store.job(job).reason or "")
    assert any("pool lab: controller failed" in line for line in announced)


def test_store_wait_returns_at_the_end_or_after_the_timeout(tmp_path: Path) -> None:
    store = Store(tmp_path / "batchpool.db")
    job = store.submit(_spec("waited"), "local")
    started = time.monotonic()
    assert store.wait(job, timeout=0.2).state == "queued"
    assert 0.2 <= time.monotonic() - started < 5
    ender = threading.Timer(0.3, store.finish_unowned, (job, "cancelled", "enough"))
    ender.start()
    try:
        ended = store.wait(job, timeout=30)
    finally:
        ender.join()
    assert ended.state == "cancelled" and ended.reason == "enough"
    with pytest.raises(NotFound):
        store.wait(job + 1)
