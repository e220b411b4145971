"""Schedules: cron checks, fire times across time zones and DST, overlap decisions, and
their rows in a real SQLite store."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from batchpool.config import Config, local_pool
from batchpool.errors import NotFound, StoreError
from batchpool.schedules import (
    ScheduleError,
    check_cron,
    check_zone,
    local_zone,
    next_fire,
    on_turn,
)
from batchpool.service import Service
from batchpool.spec import JobSpec
from batchpool.store import ScheduleRow, Store

PARIS = ZoneInfo("Europe/Paris")


def at(*fields: int, zone: ZoneInfo = PARIS) -> float:
    return datetime(*fields, tzinfo=zone).timestamp()


def test_cron_needs_five_valid_fields() -> None:
    assert check_cron("  0  2 * *   * ") == "0 2 * * *"
    with pytest.raises(ScheduleError, match="has 6 field"):
        check_cron("0 0 2 * * *")
    with pytest.raises(ScheduleError, match="not valid"):
        check_cron("0 24 * * *")
    with pytest.raises(ScheduleError, match="never matches"):
        check_cron("0 0 31 2 *")
    with pytest.raises(ScheduleError, match="unknown time zone"):
        check_zone("Europe/Atlantis")


def test_fires_in_the_schedule_s_zone_and_across_dst() -> None:
    assert next_fire("0 2 * * *", "Europe/Paris", at(2026, 12, 4, 23, 0)) == at(2026, 12, 5, 2, 0)
    assert next_fire("0 2 * * *", "UTC", at(2026, 12, 4, 23, 0)) == at(2026, 12, 5, 3, 0)
    # 02:30 does not exist in Paris on 29 March 2026: the fire comes when clocks resume
    assert next_fire("30 2 * * *", "Europe/Paris", at(2026, 3, 28, 12, 0)) == \
        at(2026, 3, 29, 3, 0)
    # 02:30 comes twice in Paris on 25 October 2026: it fires once, the next day's after
    first = next_fire("30 2 * * *", "Europe/Paris", at(2026, 10, 24, 12, 0))
    assert first == at(2026, 10, 25, 2, 30)   # the first 02:30 (summer time)
    assert next_fire("30 2 * * *", "Europe/Paris", first) == at(2026, 10, 26, 2, 30)
    assert next_fire("*/15 * * * *", "UTC", at(2026, 1, 1, 0, 7, zone=ZoneInfo("UTC"))) == \
        at(2026, 1, 1, 0, 15, zone=ZoneInfo("UTC"))


def test_local_zone_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    assert local_zone() == "America/New_York"
    monkeypatch.setenv("TZ", ":Asia/Tokyo")   # the glibc form
    assert local_zone() == "Asia/Tokyo"
    monkeypatch.setenv("TZ", "Not/AZone")
    assert local_zone() != "Not/AZone"   # /etc/localtime's zone, or UTC


CRON = "0 * * * *"   # every hour
NOW = at(2026, 12, 5, 10, 30)
DUE = at(2026, 12, 5, 10, 0)
NEXT = at(2026, 12, 5, 11, 0)


def decide(overlap: str, next_run: float = DUE, pending: bool = False,
           busy: bool = False):  # type: ignore[no-untyped-def]
    return on_turn(CRON, "Europe/Paris", overlap, next_run, pending, busy, NOW)


def test_a_schedule_that_is_not_due_does_nothing() -> None:
    assert decide("skip", next_run=NEXT) is None


def test_a_due_schedule_submits_and_counts_its_next_fire_from_now() -> None:
    long_missed = at(2026, 11, 1, 3, 0)   # a month of missed fires: one job, not 800
    for next_run in (DUE, long_missed):
        fire = decide("skip", next_run=next_run)
        assert fire is not None and fire.submit and not fire.pending
        assert fire.next_run == NEXT


def test_overlap_policies_while_the_last_job_runs() -> None:
    skip = decide("skip", busy=True)
    assert skip is not None and not skip.submit and not skip.pending
    assert skip.note and "skipped" in skip.note and skip.next_run == NEXT
    allow = decide("allow", busy=True)
    assert allow is not None and allow.submit
    queue = decide("queue", busy=True)
    assert queue is not None and not queue.submit and queue.pending
    # the queued fire waits while the job runs, then goes as soon as it has ended
    waiting = decide("queue", next_run=NEXT, pending=True, busy=True)
    assert waiting is not None and not waiting.submit and waiting.pending
    assert waiting.note is None and waiting.next_run == NEXT
    released = decide("queue", next_run=NEXT, pending=True, busy=False)
    assert released is not None and released.submit and released.next_run == NEXT


def test_schedule_rows_in_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "batchpool.db")
    spec = JobSpec.model_validate({"name": "nightly-pi", "tasks": [{"id": "a",
                                                                     "command": "true"}]})
    row = ScheduleRow(name="nightly", cron="0 2 * * *", tz="UTC", overlap="queue",
                      pool="local", spec=spec.model_dump_json(), spec_file="/x/job.toml",
                      created=1.0, next_run=100.0, pending=False, last_job=None)
    store.add_schedule(row)
    with pytest.raises(StoreError, match="exists"):
        store.add_schedule(row)
    assert store.schedules() == [row]
    store.move_schedule("nightly", 200.0, pending=True)
    assert store.schedule("nightly").pending is True
    job_id = store.fire_schedule("nightly", next_run=300.0)
    fired = store.schedule("nightly")
    assert (fired.last_job, fired.next_run, fired.pending) == (job_id, 300.0, False)
    job = store.job(job_id)
    assert (job.name, job.state, job.pool, job.spec_file) == \
        ("nightly-pi", "queued", "local", "/x/job.toml")
    assert '"schedule": "nightly"' in store.events(job_id)[0][3]
    assert store.fire_schedule("nightly") != job_id            # `schedule run`: next_run kept
    assert store.schedule("nightly").next_run == 300.0
    store.remove_schedule("nightly")
    with pytest.raises(NotFound):
        store.remove_schedule("nightly")


def _service_with(tmp_path: Path, pools: tuple[str, ...] = ("local",)):  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "batchpool.db")
    announced: list[str] = []
    config = Config(pools={name: local_pool().model_copy(update={"name": name})
                           for name in pools})
    return store, Service(store, config, announce=announced.append), announced


def _schedule(store: Store, overlap: str, pool: str = "local") -> None:
    spec = JobSpec.model_validate({"name": "every-hour", "tasks": [{"id": "a",
                                                                     "command": "true"}]})
    store.add_schedule(ScheduleRow(name="hourly", cron="0 * * * *", tz="UTC",
                                   overlap=overlap, pool=pool, spec=spec.model_dump_json(),
                                   spec_file=None, created=0.0, next_run=time.time() - 1,
                                   pending=False, last_job=None))


def _due(store: Store) -> None:
    store.move_schedule("hourly", time.time() - 1, store.schedule("hourly").pending)


def test_the_service_queues_a_fire_until_the_last_job_ends(tmp_path: Path) -> None:
    store, service, announced = _service_with(tmp_path)
    _schedule(store, "queue")
    service._fire_schedules()
    first = store.schedule("hourly").last_job
    assert first is not None and store.job(first).state == "queued"
    store.claim(first, "someone@elsewhere")   # it runs
    _due(store)
    service._fire_schedules()
    waiting = store.schedule("hourly")
    assert waiting.pending and waiting.last_job == first and waiting.next_run > time.time()
    assert any("waits for the previous job" in line for line in announced)
    service._fire_schedules()   # still running: still one waiting, nothing submitted
    assert [job.id for job in store.jobs()] == [first]
    store.finish_owned(first, "someone@elsewhere", "succeeded", "done")
    service._fire_schedules()   # released as soon as it has ended
    second = store.schedule("hourly").last_job
    assert second not in (None, first) and not store.schedule("hourly").pending


def test_a_cancelled_last_job_frees_a_skip_schedule(tmp_path: Path) -> None:
    store, service, _ = _service_with(tmp_path)
    _schedule(store, "skip")
    service._fire_schedules()
    first = store.schedule("hourly").last_job
    assert first is not None
    store.finish_unowned(first, "cancelled", "by hand")
    _due(store)
    service._fire_schedules()
    assert store.schedule("hourly").last_job not in (None, first)


def test_a_schedule_is_fired_only_where_its_pool_is_known(tmp_path: Path) -> None:
    store, service, announced = _service_with(tmp_path, pools=("local",))
    _schedule(store, "skip", pool="lab")
    for _ in range(3):
        service._fire_schedules()
    assert store.jobs() == [] and store.schedule("hourly").next_run < time.time()
    assert sum("no pool named 'lab'" in line for line in announced) == 1


def test_a_fire_decided_on_a_stale_row_writes_nothing(tmp_path: Path) -> None:
    store, _, _ = _service_with(tmp_path)
    _schedule(store, "skip")
    by_hand = store.fire_schedule("hourly")   # `schedule run`, after the service read the row
    assert store.fire_schedule("hourly", time.time() + 60, if_last=(None,)) is None
    assert [job.id for job in store.jobs()] == [by_hand]   # the service's insert rolled back
    assert store.schedule("hourly").last_job == by_hand
