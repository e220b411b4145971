"""Schedules: cron checks, fire times across time zones and DST, overlap decisions, and
their rows in a real SQLite store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from batchpool.errors import NotFound, StoreError
from batchpool.schedules import (
    ScheduleError,
    check_cron,
    check_zone,
    local_zone,
    next_fire,
    on_turn,
)
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
    with pytest.raises(ScheduleError, match="unknown time zone"):
        check_zone("Europe/Atlantis")


def test_fires_in_the_schedule_s_zone_and_across_dst() -> None:
    assert next_fire("0 2 * * *", "Europe/Paris", at(2026, 12, 4, 23, 0)) == at(2026, 12, 5, 2, 0)
    assert next_fire("0 2 * * *", "UTC", at(2026, 12, 4, 23, 0)) == at(2026, 12, 5, 3, 0)
    # 02:30 does not exist in Paris on 29 March 2026: the fire comes when clocks resume
    assert next_fire("30 2 * * *", "Europe/Paris", at(2026, 3, 28, 12, 0)) == \
        at(2026, 3, 29, 3, 0)
    assert next_fire("*/15 * * * *", "UTC", at(2026, 1, 1, 0, 7, zone=ZoneInfo("UTC"))) == \
        at(2026, 1, 1, 0, 15, zone=ZoneInfo("UTC"))


def test_local_zone_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    assert local_zone() == "America/New_York"
    monkeypatch.setenv("TZ", "Not/AZone")
    check_zone(local_zone())   # falls back to /etc/localtime or UTC, never an invalid name


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
