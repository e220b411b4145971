"""The controller service's choices (pure) and its store-side steps on a real SQLite file."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from batchpool import defaults
from batchpool.config import Config, PoolConfig, local_pool
from batchpool.errors import BatchpoolError, NotFound
from batchpool.service import Service, _PoolRun, claimable
from batchpool.service_lock import ServiceLock, drain, open_wake_channel, wake_service
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
    assert service._claim(["local"], set(), fail_strays=True) == {"local": [queued, orphan]}
    assert store.job(queued).owner == service.owner == store.job(orphan).owner
    assert store.job(stray).state == "failed"
    assert "no pool named 'gone-pool'" in (store.job(stray).reason or "")
    assert store.job(session).state == "failed"
    assert "Executor process has gone" in (store.job(session).reason or "")
    assert any("adopted" in line and f"job {orphan}" in line for line in announced)
    assert service._claim(["local"], set(), fail_strays=True) == {}   # nothing is taken twice


def test_a_busy_pool_leaves_its_jobs_to_its_controller(tmp_path: Path) -> None:
    store = Store(tmp_path / "batchpool.db")
    job = store.submit(_spec("later"), "local")
    service = _service(store, [])
    assert service._claim([], set(), fail_strays=True) == {}
    assert store.job(job).state == "queued"


def test_one_service_per_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "batchpool.db")
    first, second = ServiceLock(store), ServiceLock(store)
    assert not second.held_elsewhere()
    with first.held():
        assert first.path.read_text() == str(os.getpid())
        assert second.held_elsewhere()
        with pytest.raises(BatchpoolError, match=f"pid {os.getpid()}"):
            second.acquire()
    assert first.path.read_text() == ""   # no stale pid left behind
    assert not second.held_elsewhere()
    with first.path.open() as probe:   # another process's probe, caught mid-way
        fcntl.flock(probe, fcntl.LOCK_SH)
        assert not second.held_elsewhere()   # probes do not see each other as services


def test_submit_wakes_the_service_through_its_channel(tmp_path: Path) -> None:
    store = Store(tmp_path / "batchpool.db")
    other = Store(tmp_path / "other" / "batchpool.db")
    assert not wake_service(store)   # nobody listens
    with ServiceLock(store).held():   # a service that only polls (no abstract namespace)
        assert wake_service(store)
    channel = open_wake_channel(store)
    assert channel is not None
    try:
        assert open_wake_channel(store) is None   # one listener per store
        assert wake_service(store) and wake_service(store)
        assert not wake_service(other)   # another store's service is not this one
        assert channel.recv(64) == b"w"
        drain(channel)
        with pytest.raises(BlockingIOError):
            channel.recv(64)
    finally:
        channel.close()
    assert not wake_service(store)


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


def test_jobs_of_a_controller_that_failed_mid_run_are_retaken_then_failed(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "batchpool.db")
    announced: list[str] = []
    service = _service(store, announced)
    job = store.submit(_spec("unlucky"), "local", state="running", owner=service.owner)

    async def controller_fails() -> None:
        async def bug() -> None:
            raise RuntimeError("a bug")

        task = asyncio.create_task(bug())
        await asyncio.wait([task])
        up = SimpleNamespace(nodes={"local": object()}, jobs={})  # it had set a node up
        await service._ended("local", _PoolRun(up, task, [job]))  # type: ignore[arg-type]

    for attempt in range(1, defaults.CONTROLLER_ATTEMPTS):
        asyncio.run(controller_fails())
        assert store.job(job).state == "running"
        again = service._stranded.pop("local")
        assert service._claim(["local"], again, fail_strays=True) == {"local": [job]}
        assert sum("taken again" in line for line in announced) == attempt
    asyncio.run(controller_fails())
    assert store.job(job).state == "failed"
    assert store.job(job).reason == "controller failed: RuntimeError: a bug"
    assert "local" not in service._stranded


def test_an_ended_job_is_forgotten_with_its_controller_failures(tmp_path: Path) -> None:
    store = Store(tmp_path / "batchpool.db")
    announced: list[str] = []
    service = _service(store, announced)
    forgotten: list[int] = []
    ended = SimpleNamespace(progress=SimpleNamespace(
        state="succeeded", reason=None, name="retried", succeeded=1, total=1, failed=0))
    controller = SimpleNamespace(jobs={7: ended}, forget=forgotten.append)
    run = _PoolRun(controller, None, [7])  # type: ignore[arg-type]
    service._failures[7] = 1   # its first controller failed; the second finished it
    service._report(run)
    assert forgotten == [7] and run.job_ids == [] and 7 not in service._failures
    assert announced == ["job 7 (retried): succeeded: 1/1 succeeded, 0 failed"]
