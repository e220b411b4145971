"""Pure scheduling: placement, dependencies, retries, priorities. No I/O here."""

from batchpool.scheduler.effects import (
    Effect,
    Finish,
    JobDone,
    Kill,
    Settle,
    SettleRest,
    Start,
    attempt_key,
)
from batchpool.scheduler.retry import Outcome, RetryPolicy, should_retry
from batchpool.scheduler.scheduler import DEPENDENCY_FAILED, GroupProgress, Scheduler

__all__ = ["DEPENDENCY_FAILED", "Effect", "Finish", "GroupProgress", "JobDone", "Kill",
           "Outcome", "RetryPolicy", "Scheduler", "Settle", "SettleRest", "Start",
           "attempt_key", "should_retry"]
