"""The pure scheduler: which queued task runs next, on which node, and what happens after.

No I/O and no clock of its own: every call takes `now`, every decision comes back as a
list of effects (see effects.py) for the controller to apply. Queued members of a task
group are a cursor over positions, so a million-member array costs a few integers.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

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
from batchpool.spec import JobSpec, TaskGroupSpec

DEPENDENCY_FAILED = "dependency failed"


@dataclass
class _Tries:
    """Attempts of one dispatched, unfinished task."""

    counted: int = 0
    lost: int = 0

    @property
    def next_attempt(self) -> int:
        return self.counted + self.lost + 1


@dataclass
class _Group:
    job: _Job
    spec: TaskGroupSpec
    size: int                                        # cached: spec lookups are not free
    limit: int | None
    cursor: int = 0                                  # next undispatched position
    rest_state: str | None = None                    # undispatched members are final
    retry: list[tuple[float, int]] = field(default_factory=list)   # heap (not_before, pos)
    tries: dict[int, _Tries] = field(default_factory=dict)
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    deps: list[_Group] = field(default_factory=list)
    dependants: list[_Group] = field(default_factory=list)
    pinned: tuple[str, ...] | None = None            # on_every_node: member p runs on pinned[p]
    open: bool = False                               # more members may come (see grow)

    @property
    def settled(self) -> int:
        rest = self.size - self.cursor if self.rest_state else 0
        return self.succeeded + self.failed + self.cancelled + rest

    @property
    def complete(self) -> bool:
        return not self.open and self.settled >= self.size

    @property
    def all_succeeded(self) -> bool:
        return self.succeeded == self.size

    def unblocked(self) -> bool:
        return all(d.all_succeeded for d in self.deps)

    def has_work(self, now: float) -> bool:
        if self.retry and self.retry[0][0] <= now:
            return True
        return self.rest_state is None and self.cursor < self.size

    def under_limit(self) -> bool:
        return self.limit is None or self.running < self.limit


@dataclass
class _Job:
    id: int
    spec: JobSpec
    priority: int
    deadline: float | None
    groups: dict[str, _Group] = field(default_factory=dict)
    cancelling: str | None = None        # final state a cancellation will give: cancelled | failed
    cancel_reason: str | None = None

    @property
    def order(self) -> tuple[int, int]:
        return (-self.priority, self.id)


@dataclass(frozen=True)
class _Running:
    job: _Job
    group: _Group
    position: int
    task_id: str
    attempt: int
    node: str


@dataclass
class _Node:
    slots: int
    used: int = 0

    @property
    def free(self) -> int:
        return self.slots - self.used


@dataclass(frozen=True)
class GroupProgress:
    """Where one task group of a job restarts from (read back from the store)."""

    group_id: str
    dispatched: int = 0
    rest_state: str | None = None
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    #: (position, counted attempts, lost attempts, was running) of unfinished tasks
    unfinished: tuple[tuple[int, int, int, bool], ...] = ()


class Scheduler:
    """Decides placements, retries and final states for every job it holds."""

    def __init__(self, retry_policy: RetryPolicy | None = None) -> None:
        self.retry_policy = retry_policy or RetryPolicy()
        self._jobs: dict[int, _Job] = {}
        self._order: list[_Job] = []
        self._nodes: dict[str, _Node] = {}
        self._running: dict[str, _Running] = {}
        self._gone: dict[str, str] = {}          # nodes that left, and why

    # -- jobs ------------------------------------------------------------------------
    def add_job(self, job_id: int, spec: JobSpec, now: float,
                progress: Iterable[GroupProgress] = ()) -> list[Effect]:
        """Take on a job, fresh or resumed; attempts that were running are recorded lost."""
        deadline = now + spec.timeout if spec.timeout else None
        job = _Job(job_id, spec, spec.priority, deadline)
        for group_spec in spec.tasks:
            job.groups[group_spec.id] = _Group(job, group_spec, group_spec.size,
                                               group_spec.max_running,
                                               pinned=group_spec.pinned)
        for group in job.groups.values():
            group.deps = [job.groups[d] for d in group.spec.depends_on]
            for dep in group.deps:
                dep.dependants.append(group)
        effects: list[Effect] = []
        for saved in progress:
            group = job.groups[saved.group_id]
            group.cursor = saved.dispatched
            group.rest_state = saved.rest_state
            group.succeeded, group.failed = saved.succeeded, saved.failed
            group.cancelled = saved.cancelled
            for position, counted, lost, was_running in saved.unfinished:
                tries = _Tries(counted, lost)
                if was_running:  # its controller died: the attempt is lost, not failed
                    effects.append(Finish(
                        job_id, group.spec.id, group.spec.task_id(position), tries.next_attempt,
                        "", Outcome(error="controller stopped"), "lost", None,
                        "lost: the controller stopped while it ran", counted=False, retry_at=now))
                    tries.lost += 1
                group.tries[position] = tries
                heapq.heappush(group.retry, (now, position))
        self._jobs[job_id] = job
        self._order = sorted(self._jobs.values(), key=lambda j: j.order)
        # dependency failures recorded before a restart still settle their dependants
        for group in job.groups.values():
            if group.failed or group.cancelled:
                effects += self._fail_dependants(group)
        effects += self._maybe_done(job)
        return effects

    def grow(self, job_id: int, group_id: str, size: int) -> None:
        """An open group (the Executor's calls) has `size` members now; it stays open,
        so its job cannot end, until `seal`."""
        group = self._jobs[job_id].groups[group_id]
        assert group.rest_state is None and size >= group.cursor
        group.size, group.open = size, True

    def seal(self, job_id: int, group_id: str) -> list[Effect]:
        """No more members will come: the job ends once they are done."""
        job = self._jobs.get(job_id)
        if job is None:
            return []
        job.groups[group_id].open = False
        return self._maybe_done(job)

    def cancel_job(self, job_id: int, reason: str = "cancelled by user",
                   state: str = "cancelled") -> list[Effect]:
        """Stop a job: kill its running attempts, settle everything still queued."""
        job = self._jobs.get(job_id)
        if job is None:
            return []
        return self._cancel(job, state, reason)

    def expire(self, now: float) -> list[Effect]:
        """Fail jobs that passed their whole-job timeout."""
        effects: list[Effect] = []
        for job in list(self._jobs.values()):
            if job.deadline is not None and now >= job.deadline and job.cancelling is None:
                effects += self._cancel(job, "failed", "job timed out")
        return effects

    def next_wakeup(self) -> float | None:
        """The earliest time a retry becomes due or a job times out, if any."""
        times = [j.deadline for j in self._jobs.values()
                 if j.deadline is not None and j.cancelling is None]
        times += [g.retry[0][0] for j in self._jobs.values() for g in j.groups.values()
                  if g.retry]
        return min(times) if times else None

    @property
    def job_ids(self) -> list[int]:
        return [j.id for j in self._order]

    def running_on(self, node: str) -> list[str]:
        return [key for key, r in self._running.items() if r.node == node]

    # -- nodes -----------------------------------------------------------------------
    def add_node(self, name: str, slots: int) -> None:
        """A node ready for tasks, or a new capacity for a known node.

        `slots` is how many tasks may be placed on it at once; the controller may give
        more than the node runs in parallel so that short tasks wait on the node itself.
        """
        self._gone.pop(name, None)
        node = self._nodes.get(name)
        if node is None:
            self._nodes[name] = _Node(slots)
        else:
            node.slots = slots

    def remove_node(self, name: str, now: float, reason: str = "node lost") -> list[Effect]:
        """The node is gone (or never came): its attempts are lost and queued again,
        uncounted, except those pinned to it, which fail, like its queued pinned tasks."""
        self._nodes.pop(name, None)
        self._gone[name] = reason
        effects: list[Effect] = []
        for key in [k for k, r in self._running.items() if r.node == name]:
            effects += self.finished(key, Outcome(error=reason), now, lost=True)
        return effects

    @property
    def free_slots(self) -> int:
        return sum(max(0, n.free) for n in self._nodes.values())

    # -- placing -----------------------------------------------------------------------
    def schedule(self, now: float) -> list[Effect]:
        """Fill free slots with ready tasks: higher priority first, then submit order."""
        effects: list[Effect] = []
        free = self.free_slots
        if free <= 0:
            return effects
        for job in self._order:
            if job.cancelling is not None:
                continue
            for group in job.groups.values():
                if not group.has_work(now) or not group.unblocked():
                    continue
                while free > 0 and group.under_limit() and group.has_work(now):
                    if group.pinned is not None:
                        started = self._start_pinned(job, group, now, effects)
                        if started is None:
                            break
                        free -= started
                        continue
                    effects.append(self._start(job, group, now))
                    free -= 1
                if free <= 0:
                    return effects
        return effects

    def _start_pinned(self, job: _Job, group: _Group, now: float,
                      effects: list[Effect]) -> int | None:
        """Start (1) or fail (0) the next member of a pinned group; None: its node is busy.

        Members go in order: one whose node is busy or not up yet holds back the rest.
        """
        assert group.pinned is not None
        retry = bool(group.retry and group.retry[0][0] <= now)
        position = group.retry[0][1] if retry else group.cursor
        node_name = group.pinned[position]
        if node_name in self._gone:
            if retry:
                heapq.heappop(group.retry)
                del group.tries[position]
                new_row = None
            else:
                group.cursor += 1
                new_row = (group.spec.id, position)
            group.failed += 1
            effects.append(Settle(job.id, group.spec.task_id(position), "failed",
                                  f"node {node_name} is gone: {self._gone[node_name]}", new_row))
            effects += self._fail_dependants(group) + self._maybe_done(job)
            return 0
        node = self._nodes.get(node_name)
        if node is None or node.free <= 0:
            return None
        effects.append(self._start(job, group, now, node_name))
        return 1

    def _start(self, job: _Job, group: _Group, now: float, node_name: str | None = None) -> Start:
        if group.retry and group.retry[0][0] <= now:
            _, position = heapq.heappop(group.retry)
            tries = group.tries[position]
            first = False
        else:
            position = group.cursor
            group.cursor += 1
            tries = group.tries[position] = _Tries()
            first = True
        if node_name is None:
            node_name, node = max(self._nodes.items(), key=lambda item: item[1].free)
        else:
            node = self._nodes[node_name]
        node.used += 1
        group.running += 1
        member = group.spec.member(position)
        task_id = member.task_id
        start = Start(job.id, group.spec.id, position, task_id, tries.next_attempt, node_name,
                      first, member.index, member.params)
        self._running[start.key] = _Running(job, group, position, task_id, start.attempt,
                                            node_name)
        return start

    # -- results -------------------------------------------------------------------------
    def finished(self, key: str, outcome: Outcome, now: float,
                 lost: bool = False) -> list[Effect]:
        """An attempt ended. Unknown keys (late results of superseded attempts) are ignored."""
        run = self._running.pop(key, None)
        if run is None:
            return []
        group, job = run.group, run.job
        group.running -= 1
        node = self._nodes.get(run.node)
        if node is not None:
            node.used -= 1
        tries = group.tries[run.position]
        effects: list[Effect] = []
        spec = group.spec
        if lost and group.pinned is not None:  # it cannot run anywhere else
            lost = False
            outcome = Outcome(error=outcome.error or "node lost")
        if lost and job.cancelling is None:
            tries.lost += 1
            heapq.heappush(group.retry, (now, run.position))
            effects.append(Finish(job.id, spec.id, run.task_id, run.attempt, run.node, outcome,
                                  "lost", None, f"lost: {outcome.describe()}", False, now))
            return effects
        tries.counted += 0 if lost else 1
        attempt_state = _attempt_state(outcome, lost)
        if outcome.succeeded:
            final, reason = "succeeded", None
        elif job.cancelling is not None:
            final, reason = "cancelled", job.cancel_reason
        elif outcome.cancelled:  # only a cancel stops an attempt: an Executor's future
            final, reason = "cancelled", "cancelled"
        elif should_retry(outcome, tries.counted, spec.max_attempts, spec.retry_exit_codes):
            retry_at = now + self.retry_policy.delay(tries.counted)
            heapq.heappush(group.retry, (retry_at, run.position))
            effects.append(Finish(job.id, spec.id, run.task_id, run.attempt, run.node, outcome,
                                  attempt_state, None, outcome.describe(), True, retry_at))
            return effects
        else:
            final, reason = "failed", _failure_reason(outcome, tries.counted)
        del group.tries[run.position]
        setattr(group, final, getattr(group, final) + 1)
        effects.append(Finish(job.id, spec.id, run.task_id, run.attempt, run.node, outcome,
                              attempt_state, final, reason, not lost))
        if final == "failed":
            if job.spec.on_task_failure == "cancel" and job.cancelling is None:
                effects += self._cancel(job, "failed", f"task {run.task_id} failed")
            effects += self._fail_dependants(group)
        effects += self._maybe_done(job)
        return effects

    # -- internals -------------------------------------------------------------------------
    def _cancel(self, job: _Job, state: str, reason: str) -> list[Effect]:
        job.cancelling, job.cancel_reason = state, reason
        effects: list[Effect] = [Kill(key, r.node) for key, r in self._running.items()
                                 if r.job is job]
        for group in job.groups.values():
            effects += self._settle_queued(group, "cancelled", reason)
            group.open = False
        effects += self._maybe_done(job)
        return effects

    def _settle_queued(self, group: _Group, state: str, reason: str) -> list[Effect]:
        """End every member of `group` that is waiting (undispatched or awaiting retry)."""
        effects: list[Effect] = []
        if group.rest_state is None and group.cursor < group.size:
            group.rest_state = state
            effects.append(SettleRest(group.job.id, group.spec.id, state, reason,
                                      group.size - group.cursor))
        while group.retry:
            _, position = heapq.heappop(group.retry)
            del group.tries[position]
            setattr(group, state, getattr(group, state) + 1)
            effects.append(Settle(group.job.id, group.spec.task_id(position), state, reason))
        return effects

    def _fail_dependants(self, group: _Group) -> list[Effect]:
        effects: list[Effect] = []
        for dependant in group.dependants:
            if dependant.rest_state is None and dependant.cursor < dependant.size:
                effects += self._settle_queued(dependant, "failed", DEPENDENCY_FAILED)
                effects += self._fail_dependants(dependant)
        return effects

    def _maybe_done(self, job: _Job) -> list[Effect]:
        if job.id not in self._jobs or self._any_running(job):
            return []
        if not all(g.complete for g in job.groups.values()):
            return []
        del self._jobs[job.id]
        self._order = [j for j in self._order if j is not job]
        failed = sum(g.failed + (g.size - g.cursor if g.rest_state == "failed" else 0)
                     for g in job.groups.values())
        if job.cancelling is not None:
            return [JobDone(job.id, job.cancelling, job.cancel_reason)]
        if failed:
            return [JobDone(job.id, "failed", f"{failed} task(s) failed")]
        return [JobDone(job.id, "succeeded", None)]

    def _any_running(self, job: _Job) -> bool:
        return any(g.running for g in job.groups.values())


def _attempt_state(outcome: Outcome, lost: bool) -> str:
    if lost:
        return "lost"
    if outcome.succeeded:
        return "succeeded"
    if outcome.cancelled:
        return "cancelled"
    if outcome.timed_out:
        return "timed_out"
    return "failed"


def _failure_reason(outcome: Outcome, attempts: int) -> str:
    plural = "attempt" if attempts == 1 else "attempts"
    return f"{outcome.describe()} after {attempts} {plural}"


__all__ = ["DEPENDENCY_FAILED", "GroupProgress", "Scheduler", "attempt_key"]
