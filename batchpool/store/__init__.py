"""The durable store (SQLite, WAL): jobs, groups, tasks, attempts, pools, nodes, events."""

from batchpool.store.store import (
    TERMINAL_JOB_STATES,
    AttemptRow,
    GroupRow,
    JobRow,
    ScheduleRow,
    Store,
    TaskRow,
)
from batchpool.store.writer import StoreWriter

__all__ = ["TERMINAL_JOB_STATES", "AttemptRow", "GroupRow", "JobRow", "ScheduleRow", "Store",
           "StoreWriter", "TaskRow"]
