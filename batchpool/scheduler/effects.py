"""What the scheduler asks the controller to do. Plain values; the controller applies them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchpool.scheduler.retry import Outcome


@dataclass(frozen=True)
class Start:
    """Run attempt `attempt` of a task on `node`. `first` is its first dispatch ever."""

    job_id: int
    group_id: str
    position: int
    task_id: str
    attempt: int
    node: str
    first: bool
    index: int | None = None            # the array index or grid position, for placeholders
    params: Mapping[str, Any] = field(default_factory=dict)   # this member's grid values
    key: str = field(init=False, compare=False)   # the attempt's key (attempt_key)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", attempt_key(self.job_id, self.task_id, self.attempt))


@dataclass(frozen=True)
class Kill:
    """Stop a running attempt (cancellation)."""

    key: str
    node: str


@dataclass(frozen=True)
class Finish:
    """An attempt ended; `final` is the task's final state, or None when it will retry."""

    job_id: int
    group_id: str
    task_id: str
    attempt: int
    node: str
    outcome: Outcome
    attempt_state: str              # succeeded | failed | timed_out | cancelled | lost
    final: str | None               # succeeded | failed | cancelled | None (queued again)
    reason: str | None
    counted: bool                   # counts against max_attempts
    retry_at: float | None = None


@dataclass(frozen=True)
class Settle:
    """A queued task that never ran again ends (job cancelled, dependency failed)."""

    job_id: int
    task_id: str
    state: str
    reason: str
    #: (group id, position) of a member that was never dispatched, so has no row yet
    new_row: tuple[str, int] | None = None


@dataclass(frozen=True)
class SettleRest:
    """Every undispatched member of a group ends with `state` (no rows are written)."""

    job_id: int
    group_id: str
    state: str
    reason: str
    count: int                      # how many members that is


@dataclass(frozen=True)
class JobDone:
    job_id: int
    state: str                      # succeeded | failed | cancelled
    reason: str | None


Effect = Start | Kill | Finish | Settle | SettleRest | JobDone


def attempt_key(job_id: int, task_id: str, attempt: int) -> str:
    """The attempt's id on the wire and its directory relative to a node's workdir."""
    return f"{job_id}/{task_id}/{attempt}"
