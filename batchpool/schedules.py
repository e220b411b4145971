"""Job schedules: a cron expression that submits a job spec, and what each fire does.

Pure decisions, no I/O: when a schedule fires next, and whether a fire submits a job
given the schedule's previous job. The controller service applies them every turn.
Cron expressions are read by croniter (well kept, DST-aware with zoneinfo zones): the
standard five fields, minute hour day-of-month month day-of-week, in the schedule's
time zone. When both day fields are restricted, a day matching either one fires.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from batchpool.errors import BatchpoolError

#: What a fire does while the schedule's previous job is still unfinished: `skip` it,
#: `queue` it (one job waits and is submitted when the previous one ends), or `allow`
#: two jobs to run at once.
OVERLAPS = ("skip", "queue", "allow")


class ScheduleError(BatchpoolError):
    """A cron expression, time zone or overlap policy that cannot be used."""


def check_cron(expression: str) -> str:
    """The expression, normalised; ScheduleError saying what is wrong."""
    fields = expression.split()
    if len(fields) != 5:
        raise ScheduleError(f"cron expression {expression!r} has {len(fields)} field(s); it "
                            "needs 5: minute hour day-of-month month day-of-week "
                            "(e.g. '0 2 * * *' for 02:00 every day)")
    normalised = " ".join(fields)
    if not croniter.is_valid(normalised):
        raise ScheduleError(f"cron expression {expression!r} is not valid (fields: minute "
                            "0-59, hour 0-23, day 1-31, month 1-12 or jan-dec, day-of-week "
                            "0-7 or sun-sat)")
    try:   # valid fields can still name a date that never comes: 31 February
        next_fire(normalised, "UTC", datetime.now().timestamp())
    except CroniterError:
        raise ScheduleError(f"cron expression {expression!r} never matches a date") from None
    return normalised


def check_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r} (an IANA name such as "
                            "'Europe/Paris' or 'UTC')") from None


def local_zone() -> str:
    """This machine's IANA time zone ($TZ, else /etc/localtime's link), else UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    localtime = Path("/etc/localtime")
    if localtime.is_symlink():
        target = str(localtime.resolve())
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    for name in candidates:
        if name:
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
            return name
    return "UTC"


def next_fire(expression: str, zone: str, after: float) -> float:
    """The first time strictly after `after` (a Unix time) that the expression matches in
    `zone`. A wall-clock time that a DST change skips fires when the clock resumes; one
    that it repeats (clocks going back) fires once, at its first occurrence."""
    start = datetime.fromtimestamp(after, check_zone(zone))
    times = croniter(expression, start)
    while True:
        following: datetime = times.get_next(datetime)
        # the second 02:30 of the night clocks go back: that wall-clock time has fired
        if following.fold == 1 and following.replace(fold=0).timestamp() <= after:
            continue
        return following.timestamp()


@dataclass(frozen=True)
class Fire:
    """What a schedule does on this turn of the service."""

    submit: bool          # submit a job now
    pending: bool         # a fire waits for the previous job to end (overlap = queue)
    next_run: float       # when it fires next
    note: str | None = None   # why nothing was submitted, to be reported


def on_turn(expression: str, zone: str, overlap: str, next_run: float, pending: bool,
            previous_unfinished: bool, now: float) -> Fire | None:
    """A schedule's decision at `now`; None when it is not due and nothing waits.

    Fires missed while no service ran are not made up one by one: the first turn after
    them submits one job (if the overlap policy lets it), and the next fire is counted
    from now.
    """
    due = now >= next_run
    if not due and not pending:
        return None
    following = next_fire(expression, zone, now) if due else next_run
    if previous_unfinished and overlap != "allow":
        if overlap == "queue":
            return Fire(False, True, following,
                        "waits for the previous job to end" if due else None)
        return Fire(False, False, following,
                    "skipped: the previous job is still running" if due else None)
    return Fire(True, False, following)
