"""The durable store: one SQLite file (WAL) per deployment, the single source of truth.

Reads happen on the caller's thread with short-lived connections; the controller's
writes go through a `StoreWriter` so its event loop never waits on the disk.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from batchpool import defaults
from batchpool.errors import NotFound, StoreError
from batchpool.spec import JobSpec
from batchpool.store.schema import MIGRATIONS
from batchpool.store.writer import StoreWriter

TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})
TASK_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def _nobody_gone(owner: str) -> bool:
    """The default for `owner_gone`: only staleness frees a job."""
    return False


@dataclass(frozen=True)
class JobRow:
    """One job as the store knows it."""

    id: int
    name: str
    pool: str
    state: str
    reason: str | None
    priority: int
    submitted: float
    started: float | None
    finished: float | None
    owner: str | None
    owner_seen: float | None
    cancel_requested: bool
    spec_file: str | None
    spec_json: str

    @property
    def spec(self) -> JobSpec:
        return JobSpec.model_validate_json(self.spec_json)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_JOB_STATES


@dataclass(frozen=True)
class GroupRow:
    """A task group's cursor: members below `dispatched` have task rows."""

    job_id: int
    group_id: str
    ordinal: int
    size: int
    dispatched: int
    rest_state: str | None
    rest_reason: str | None


@dataclass(frozen=True)
class TaskRow:
    job_id: int
    task_id: str
    group_id: str
    position: int
    state: str
    attempts: int
    lost: int
    exit_code: int | None
    signal: int | None
    reason: str | None
    node: str | None
    started: float | None
    finished: float | None


@dataclass(frozen=True)
class AttemptRow:
    job_id: int
    task_id: str
    attempt: int
    node: str
    state: str
    started: float
    finished: float | None
    exit_code: int | None
    signal: int | None
    cpu: float | None
    dir: str
    outputs: tuple[str, ...]
    reason: str | None
    result: str | None = None    # a Python call's JSON return value


@dataclass(frozen=True)
class ScheduleRow:
    """A job schedule: when it fires (schedules.py decides) and the job it submits."""

    name: str
    cron: str
    tz: str
    overlap: str          # skip | queue | allow (schedules.OVERLAPS)
    pool: str
    spec: str             # the validated spec, as JSON: a snapshot taken when added
    spec_file: str | None
    created: float
    next_run: float
    pending: bool         # a fire waits for the last job to end (overlap = queue)
    last_job: int | None


_SCHEDULE_FIELDS = tuple(f.name for f in fields(ScheduleRow))   # its columns, in order
_SCHEDULE_COLUMNS = ", ".join(_SCHEDULE_FIELDS)


class Store:
    """A handle on the store file. Cheap to create; opens connections on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # -- connections ---------------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        """A new connection with the store's pragmas, migrated to the latest schema."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                 check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        _migrate(db)
        db.isolation_level = "DEFERRED"
        return db

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        db = self.connect()
        try:
            yield db
        finally:
            db.close()

    def writer(self) -> StoreWriter:
        """A started background writer on its own connection."""
        writer = StoreWriter(self.connect)
        writer.start()
        return writer

    # -- jobs ----------------------------------------------------------------------
    def submit(self, spec: JobSpec, pool: str, spec_file: str | None = None,
               state: str = "queued", owner: str | None = None) -> int:
        """Record a job and its groups in one transaction; returns the job id."""
        with self.reading() as db, db:
            return _insert_job(db, spec, pool, spec_file, state, owner, time.time(),
                               {"pool": pool})

    def job(self, job_id: int) -> JobRow:
        with self.reading() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return _job_row(row)

    def jobs(self, limit: int = 50, states: tuple[str, ...] = ()) -> list[JobRow]:
        query = f"SELECT {_JOB_COLUMNS} FROM jobs"
        params: list[Any] = []
        if states:
            query += f" WHERE state IN ({','.join('?' * len(states))})"
            params.extend(states)
        query += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        with self.reading() as db:
            return [_job_row(r) for r in db.execute(query, params)]

    def wait(self, job_id: int, timeout: float | None = None,
             interval: float = defaults.WAIT_POLL) -> JobRow:
        """The job once it has ended, or as it is after `timeout` seconds.

        One connection for the whole wait, so that each look is a single cheap read and
        `interval` can be short: a waiting `submit --wait` sees the end ~20 ms after the
        controller's writer has committed it (it commits every STORE_FLUSH_INTERVAL).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        query = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?"
        with self.reading() as db:
            while True:
                row = db.execute(query, (job_id,)).fetchone()
                if row is None:
                    raise NotFound(f"no job {job_id}")
                job = _job_row(row)
                if job.terminal or (deadline is not None and time.monotonic() >= deadline):
                    return job
                time.sleep(interval)

    # -- schedules -------------------------------------------------------------------
    def add_schedule(self, schedule: ScheduleRow) -> None:
        """Record a new schedule; StoreError if one has its name."""
        try:
            with self.reading() as db, db:
                db.execute(f"INSERT INTO schedules ({_SCHEDULE_COLUMNS}) VALUES "
                           f"({','.join('?' * len(_SCHEDULE_FIELDS))})",
                           [getattr(schedule, name) for name in _SCHEDULE_FIELDS])
        except sqlite3.IntegrityError:
            raise StoreError(f"a schedule named {schedule.name!r} exists; remove it first "
                             f"(batchpool schedule remove {schedule.name})") from None

    def schedules(self) -> list[ScheduleRow]:
        with self.reading() as db:
            return [_schedule_row(row) for row in db.execute(
                f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY name")]

    def schedule(self, name: str) -> ScheduleRow:
        with self.reading() as db:
            row = db.execute(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE name=?",
                             (name,)).fetchone()
        if row is None:
            raise NotFound(f"no schedule named {name!r}")
        return _schedule_row(row)

    def remove_schedule(self, name: str) -> None:
        with self.reading() as db, db:
            if db.execute("DELETE FROM schedules WHERE name=?", (name,)).rowcount != 1:
                raise NotFound(f"no schedule named {name!r}")

    def fire_schedule(self, name: str, next_run: float | None = None,
                      if_last: tuple[int | None] | None = None) -> int | None:
        """Submit the schedule's job and note it as its last, in one transaction (so that
        a crash cannot submit a fire twice); with `next_run`, also move its next fire.

        With `if_last`, only while the schedule's last job is still `if_last[0]` (the
        service decided from that; `schedule run` or `remove` may have come since):
        None, and nothing written, otherwise. Returns the job id.
        """
        schedule = self.schedule(name)
        now = time.time()
        with self.reading() as db, db:
            job_id = _insert_job(db, JobSpec.model_validate_json(schedule.spec),
                                 schedule.pool, schedule.spec_file, "queued", None, now,
                                 {"pool": schedule.pool, "schedule": name})
            query = ("UPDATE schedules SET last_job=?, pending=0,"
                     " next_run=COALESCE(?, next_run) WHERE name=?")
            params: list[Any] = [job_id, next_run, name]
            if if_last is not None:
                query += " AND last_job IS ?"
                params.append(if_last[0])
            if db.execute(query, params).rowcount != 1:
                db.rollback()
                return None
        return job_id

    def move_schedule(self, name: str, next_run: float, pending: bool,
                      if_last: tuple[int | None] | None = None) -> None:
        """A fire that submitted nothing: its next time, and whether one waits (with
        `if_last`, only while the last job is still that one)."""
        query = "UPDATE schedules SET next_run=?, pending=? WHERE name=?"
        params: list[Any] = [next_run, int(pending), name]
        if if_last is not None:
            query += " AND last_job IS ?"
            params.append(if_last[0])
        with self.reading() as db, db:
            db.execute(query, params)

    def unfinished_jobs(self) -> list[JobRow]:
        """Every queued or running job, oldest first: what a controller service looks at."""
        with self.reading() as db:
            return [_job_row(r) for r in db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state NOT IN {_TERMINAL_SQL}"
                " ORDER BY id")]

    def request_cancel(self, job_id: int) -> JobRow:
        """Ask whoever runs the job to cancel it (a job nobody runs: `finish_unowned`)."""
        job = self.job(job_id)
        if job.terminal:
            return job
        now = time.time()
        with self.reading() as db, db:
            db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
            db.execute("INSERT INTO events (time, job_id, kind) VALUES (?,?,?)",
                       (now, job_id, "cancel requested"))
        return self.job(job_id)

    def claim(self, job_id: int, owner: str, stale_after: float = defaults.OWNER_STALE,
              owner_gone: Callable[[str], bool] = _nobody_gone) -> JobRow:
        """Take ownership of a job whose owner is gone (or silent too long, or absent)."""
        now = time.time()
        previous = self.job(job_id)
        condition, params = _takeover(previous, now, stale_after, owner_gone)
        with self.reading() as db, db:
            cur = db.execute(
                "UPDATE jobs SET owner=?, owner_seen=?, state='running',"
                " started=COALESCE(started, ?)"
                f" WHERE id=? AND state NOT IN {_TERMINAL_SQL} AND {condition}",
                (owner, now, now, job_id, *params),
            )
            claimed = cur.rowcount == 1
        job = self.job(job_id)
        if not claimed:
            if job.terminal:
                raise StoreError(f"job {job_id} is already {job.state}")
            raise StoreError(
                f"job {job_id} is still run by {job.owner} (seen "
                f"{now - (job.owner_seen or now):.0f}s ago); stop it first"
            )
        return job

    def finish_unowned(self, job_id: int, state: str, reason: str,
                       stale_after: float = defaults.OWNER_STALE,
                       owner_gone: Callable[[str], bool] = _nobody_gone) -> bool:
        """End a job that no live controller runs; True if it was ended here.

        That is a job nobody owns (cancelled while queued), or one whose owner `claim`
        would take over: a dead process on this host, or silent for `stale_after`
        seconds (a `batchpool run` killed with SIGKILL). A live owner is left alone; it
        acts on `cancel_requested` itself.
        """
        now = time.time()
        job = self.job(job_id)
        if job.terminal:
            return False
        condition, params = _takeover(job, now, stale_after, owner_gone)
        return self._finish(job_id, state, reason, now, condition, params)

    def finish_owned(self, job_id: int, owner: str, state: str, reason: str) -> bool:
        """End a job that `owner` took on but could not run (say, its pool would not plan).

        Without this the job would stay `running` under a process that has exited.
        """
        return self._finish(job_id, state, reason, time.time(), "owner=?", (owner,))

    def _finish(self, job_id: int, state: str, reason: str, now: float, condition: str,
                params: tuple[Any, ...]) -> bool:
        """Give a job, its groups and its unfinished tasks a final state, if `condition`."""
        with self.reading() as db, db:
            cur = db.execute(
                "UPDATE jobs SET state=?, reason=?, finished=?, owner=NULL WHERE id=?"
                f" AND state NOT IN {_TERMINAL_SQL} AND {condition}",
                (state, reason, now, job_id, *params))
            if cur.rowcount != 1:
                return False
            db.execute("UPDATE groups SET rest_state=?, rest_reason=? WHERE job_id=? AND"
                       " rest_state IS NULL", (state, reason, job_id))
            db.execute("UPDATE tasks SET state=?, reason=?, finished=? WHERE job_id=? AND state"
                       " IN ('queued','running')", (state, reason, now, job_id))
            db.execute("INSERT INTO events (time, job_id, kind, detail) VALUES (?,?,?,?)",
                       (now, job_id, f"job {state}", json.dumps({"reason": reason})))
        return True

    # -- groups, tasks, attempts ------------------------------------------------------
    def groups(self, job_id: int) -> list[GroupRow]:
        with self.reading() as db:
            rows = db.execute(
                "SELECT g.job_id, g.group_id, g.ordinal, g.size,"
                " (SELECT COUNT(*) FROM tasks t WHERE t.job_id=g.job_id AND"
                "  t.group_id=g.group_id), g.rest_state, g.rest_reason"
                " FROM groups g WHERE g.job_id=? ORDER BY g.ordinal", (job_id,)).fetchall()
        return [GroupRow(*r) for r in rows]

    def tasks(self, job_id: int, states: tuple[str, ...] = (),
              group_id: str | None = None) -> list[TaskRow]:
        query = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE job_id=?"
        params: list[Any] = [job_id]
        if states:
            query += f" AND state IN ({','.join('?' * len(states))})"
            params.extend(states)
        if group_id is not None:
            query += " AND group_id=?"
            params.append(group_id)
        query += " ORDER BY group_id, position"
        with self.reading() as db:
            return [TaskRow(*r) for r in db.execute(query, params)]

    def task(self, job_id: int, task_id: str) -> TaskRow:
        with self.reading() as db:
            row = db.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE job_id=? AND task_id=?",
                             (job_id, task_id)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} has no task {task_id!r} that has started")
        return TaskRow(*row)

    def attempts(self, job_id: int, task_id: str | None = None) -> list[AttemptRow]:
        query = f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE job_id=?"
        params: list[Any] = [job_id]
        if task_id is not None:
            query += " AND task_id=?"
            params.append(task_id)
        query += " ORDER BY task_id, attempt"
        with self.reading() as db:
            return [_attempt_row(r) for r in db.execute(query, params)]

    def counts(self, job_id: int) -> dict[str, dict[str, int]]:
        """Per group, how many members are in each task state (undispatched included)."""
        result: dict[str, dict[str, int]] = {}
        undispatched: dict[str, tuple[int, str | None]] = {}
        with self.reading() as db:
            for group_id, size, rest_state in db.execute(
                    "SELECT group_id, size, rest_state FROM groups"
                    " WHERE job_id=? ORDER BY ordinal", (job_id,)):
                result[group_id] = dict.fromkeys(TASK_STATES, 0)
                undispatched[group_id] = (size, rest_state)
            for group_id, state, n in db.execute(
                    "SELECT group_id, state, COUNT(*) FROM tasks WHERE job_id=?"
                    " GROUP BY group_id, state", (job_id,)):
                result[group_id][state] += n
        for group_id, (size, rest_state) in undispatched.items():
            result[group_id][rest_state or "queued"] += size - sum(result[group_id].values())
        return result

    def events(self, job_id: int, limit: int = 100) -> list[tuple[float, str | None, str, str]]:
        with self.reading() as db:
            rows = db.execute(
                "SELECT time, task_id, kind, COALESCE(detail, '') FROM events WHERE job_id=?"
                " ORDER BY id DESC LIMIT ?", (job_id, limit)).fetchall()
        return list(reversed(rows))


_TERMINAL_SQL = "('succeeded','failed','cancelled')"


def _takeover(job: JobRow, now: float, stale_after: float,
              owner_gone: Callable[[str], bool]) -> tuple[str, tuple[Any, ...]]:
    """SQL condition (and its parameters) under which another process may take `job` over.

    The owner must still be the one just read (no other process got in first), and be
    absent, dead (`owner_gone`, for a process on this host) or silent for `stale_after`
    seconds. Shared by `claim` and `finish_unowned` so that both judge owners alike.
    """
    cutoff = now if job.owner and owner_gone(job.owner) else now - stale_after
    return ("owner IS ? AND (owner IS NULL OR owner_seen IS NULL OR owner_seen <= ?)",
            (job.owner, cutoff))


_JOB_COLUMNS = ("id, name, pool, state, reason, priority, submitted, started, finished, owner,"
                " owner_seen, cancel_requested, spec_file, spec")
_TASK_COLUMNS = ("job_id, task_id, group_id, position, state, attempts, lost, exit_code,"
                 " signal, reason, node, started, finished")
_ATTEMPT_COLUMNS = ("job_id, task_id, attempt, node, state, started, finished, exit_code,"
                    " signal, cpu, dir, outputs, reason, result")


def _insert_job(db: sqlite3.Connection, spec: JobSpec, pool: str, spec_file: str | None,
                state: str, owner: str | None, now: float, detail: dict[str, Any]) -> int:
    """The rows of a new job, in the caller's transaction; its id."""
    cur = db.execute(
        "INSERT INTO jobs (name, pool, spec, spec_file, priority, state, submitted,"
        " started, owner, owner_seen) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (spec.name, pool, spec.model_dump_json(), spec_file, spec.priority, state, now,
         now if state == "running" else None, owner, now if owner else None),
    )
    job_id = cur.lastrowid
    assert job_id is not None
    db.executemany("INSERT INTO groups (job_id, group_id, ordinal, size) VALUES (?,?,?,?)",
                   [(job_id, g.id, i, g.size) for i, g in enumerate(spec.tasks)])
    db.execute("INSERT INTO events (time, job_id, kind, detail) VALUES (?,?,?,?)",
               (now, job_id, "submitted", json.dumps(detail)))
    return job_id


def _schedule_row(row: tuple[Any, ...]) -> ScheduleRow:
    values = list(row)
    values[9] = bool(values[9])
    return ScheduleRow(*values)


def _job_row(row: tuple[Any, ...]) -> JobRow:
    values = list(row)
    values[11] = bool(values[11])
    return JobRow(*values)


def _attempt_row(row: tuple[Any, ...]) -> AttemptRow:
    values = list(row)
    values[11] = tuple(json.loads(values[11])) if values[11] else ()
    return AttemptRow(*values)


def _migrate(db: sqlite3.Connection) -> None:
    """Apply the migrations this file has not had yet."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"the store was written by a newer batchpool (schema {version}, "
            f"this one knows {len(MIGRATIONS)}); upgrade batchpool")
    for number in range(version, len(MIGRATIONS)):
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] != number:
                db.execute("ROLLBACK")  # another process migrated meanwhile
                continue
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={number + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
