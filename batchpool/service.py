"""The controller service: runs the jobs queued with `batchpool submit`, pool by pool.

One process, one asyncio loop. Every `poll` seconds, and at once when `batchpool submit`
wakes it (service_lock.py), it looks in the store for jobs to take: queued ones, and running
ones whose controller has died (a killed `batchpool run` or an earlier service), which
it adopts: their finished tasks are not run again. It claims them (an atomic update, so
two services never run one job) and hands them to one Controller per pool. That
controller brings the pool's nodes up, runs the jobs, takes the pool's later jobs as
they come, and shuts the nodes down once no job has run for the pool's `idle_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from batchpool import defaults
from batchpool.config import Config, PoolConfig
from batchpool.controller import Controller, owner_gone, owner_id
from batchpool.errors import BatchpoolError, NotFound, StoreError
from batchpool.progress import JobProgress
from batchpool.scheduler import RetryPolicy
from batchpool.schedules import on_turn
from batchpool.store import JobRow, ScheduleRow, Store

log = logging.getLogger(__name__)

#: Reports what the service does, one line at a time (the CLI prints them).
Announce = Callable[[str], None]


def claimable(jobs: Iterable[JobRow], me: str, now: float,
              stale_after: float = defaults.OWNER_STALE,
              gone: Callable[[str], bool] = owner_gone,
              host: str | None = None) -> list[JobRow]:
    """The jobs a service `me` should take, highest priority first, then oldest.

    Those are queued jobs, and running jobs of another owner that has gone: no owner, a
    dead process on this `host` (`gone`), or a process elsewhere silent for `stale_after`
    seconds. A live process here that is merely silent (a `batchpool run` stopped with
    Ctrl-Z) keeps its job: unlike `job resume`, nobody asked the service to take it.
    """
    here = host or socket.gethostname()

    def orphaned(job: JobRow) -> bool:
        if job.state != "running" or job.owner == me:
            return False
        if job.owner is None or job.owner_seen is None:
            return True
        if job.owner.partition("@")[2] == here:
            return gone(job.owner)
        return job.owner_seen <= now - stale_after

    picked = [job for job in jobs if job.state == "queued" or orphaned(job)]
    return sorted(picked, key=lambda job: (-job.priority, job.submitted, job.id))


@dataclass
class _PoolRun:
    """One pool's controller while it runs, and the jobs handed to it that have not ended."""

    controller: Controller
    task: asyncio.Task[dict[int, JobProgress]]
    job_ids: list[int] = field(default_factory=list)


class Service:
    """Takes jobs from the store and runs them, one controller per pool, until stopped."""

    def __init__(self, store: Store, config: Config, *, poll: float = defaults.SERVICE_POLL,
                 retry_policy: RetryPolicy | None = None,
                 announce: Announce = log.info) -> None:
        self.store = store
        self.config = config
        self.poll = poll
        self.retry_policy = retry_policy
        self.announce = announce
        self.owner = owner_id()
        self.runs: dict[str, _PoolRun] = {}
        self._failures: Counter[int] = Counter()   # job id -> its controllers that failed
        self._stranded: dict[str, set[int]] = {}   # pool -> its jobs to take again
        self._unfired: set[str] = set()   # schedules whose pool this service lacks (told)
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """A job was just submitted (`batchpool submit` woke the service): look now."""
        self._poked.set()
        for run in self.runs.values():
            run.controller.poke()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then stop every controller and its nodes.

        Jobs still running stay `running` under this (then dead) process, so that the
        next service adopts them.
        """
        try:
            while not stop.is_set():
                try:
                    await self.turn()
                except Exception as exc:  # a busy or broken store: try again next turn
                    log.exception("controller service turn failed")
                    self.announce(f"could not look at the store: {exc}")
                await _first_of(stop, self._poked, timeout=self.poll)
                self._poked.clear()
        finally:
            tasks = [run.task for run in self.runs.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for run in self.runs.values():
                self._report(run)

    async def turn(self) -> None:
        """One look at the store: report ended jobs, start controllers for new work."""
        for name, run in list(self.runs.items()):
            self._report(run)
            if run.task.done():
                await self._ended(name, run)
                del self.runs[name]
        await asyncio.to_thread(self._fire_schedules)
        idle = [name for name in self.config.pools if name not in self.runs]
        again = {job_id for name in idle for job_id in self._stranded.pop(name, ())}
        taken = await asyncio.to_thread(self._claim, idle, again, True)
        for name, job_ids in taken.items():
            try:
                self._start(self.config.pools[name], job_ids)
            except Exception as exc:  # try again on the next turn
                log.exception("could not start a controller for pool %s", name)
                self.announce(f"pool {name}: could not start a controller: {exc}")
                self._stranded.setdefault(name, set()).update(job_ids)

    def _start(self, pool: PoolConfig, job_ids: list[int]) -> None:
        controller = Controller(self.store, pool, retry_policy=self.retry_policy)
        run = _PoolRun(controller, asyncio.create_task(controller.run(
            list(job_ids), intake=lambda: self._intake(pool.name), linger=pool.idle_timeout)))
        run.job_ids.extend(job_ids)
        self.runs[pool.name] = run
        self.announce(f"pool {pool.name}: starting its nodes for job(s) "
                      f"{', '.join(map(str, job_ids))}")

    async def _intake(self, pool: str) -> list[int]:
        """A running controller's new jobs: those queued for its pool since it started."""
        run = self.runs.get(pool)
        try:
            job_ids = (await asyncio.to_thread(self._claim, [pool], set(), False)).get(pool, [])
        except Exception:  # the controller must not fail its jobs over it: next time
            log.exception("could not take new jobs for pool %s", pool)
            return []
        if run is not None:
            run.job_ids.extend(job_ids)
        return job_ids

    def _claim(self, pools: list[str], again: set[int],
               fail_strays: bool) -> dict[str, list[int]]:
        """Claim the claimable jobs of `pools`, in order; with `fail_strays`, end the jobs
        that no pool of the configuration can run.

        `again`: jobs this service already owns whose controller failed (see `_ended`);
        those still running are taken first. Each job is dealt with on its own, so that
        one that cannot be read does not hold up the rest.
        """
        taken: dict[str, list[int]] = {}
        unfinished = self.store.unfinished_jobs()
        retaken = [job for job in unfinished if job.id in again and job.state == "running"
                   and job.owner == self.owner]
        for job in retaken + claimable(unfinished, self.owner, time.time()):
            try:
                if self._take_one(job, pools, fail_strays):
                    taken.setdefault(job.pool, []).append(job.id)
            except Exception as exc:
                log.exception("job %s not taken", job.id)
                self.announce(f"job {job.id} ({job.name}): not taken: {exc}")
        return taken

    def _take_one(self, job: JobRow, pools: list[str], fail_strays: bool) -> bool:
        """Claim one job for a controller of `pools`; True if it is now this service's."""
        if job.pool not in self.config.pools:
            if fail_strays:
                self._finish(job, f"no pool named {job.pool!r} in the controller service's "
                                  f"configuration (known pools: {self.config.known()})")
            return False
        if job.pool not in pools:
            return False
        if job.owner == self.owner:   # its controller failed (see _ended): ours already
            self.announce(f"job {job.id} ({job.name}): taken again for pool {job.pool}")
            return True
        if job.state == "running" and job.spec.executor_session:
            self._finish(job, "its Executor process has gone (its calls lived there)")
            return False
        try:
            self.store.claim(job.id, self.owner, owner_gone=owner_gone)
        except StoreError as exc:   # another process got there first
            log.info("job %s not taken: %s", job.id, exc)
            return False
        verb = "adopted" if job.state == "running" else "took"
        self.announce(f"job {job.id} ({job.name}): {verb} for pool {job.pool}")
        return True

    def _fire_schedules(self) -> None:
        """Submit the jobs of the schedules that are due (schedules.py decides)."""
        now = time.time()
        for schedule in self.store.schedules():
            try:
                self._fire(schedule, now)
            except Exception as exc:   # one broken schedule must not stop the others
                log.exception("schedule %s", schedule.name)
                self.announce(f"schedule {schedule.name}: could not fire: {exc}")

    def _fire(self, schedule: ScheduleRow, now: float) -> None:
        if schedule.pool not in self.config.pools:   # left for a service that has it
            if schedule.name not in self._unfired:
                self._unfired.add(schedule.name)
                self.announce(f"schedule {schedule.name}: not fired here: no pool named "
                              f"{schedule.pool!r} in this service's configuration")
            return
        try:
            previous = self.store.job(schedule.last_job) if schedule.last_job else None
        except NotFound:
            previous = None
        fire = on_turn(schedule.cron, schedule.tz, schedule.overlap, schedule.next_run,
                       schedule.pending, previous is not None and not previous.terminal, now)
        if fire is None:
            return
        if fire.submit:
            job_id = self.store.fire_schedule(schedule.name, fire.next_run,
                                              if_last=(schedule.last_job,))
            if job_id is not None:
                self.announce(f"schedule {schedule.name}: submitted job {job_id}")
            return
        if (fire.next_run, fire.pending) != (schedule.next_run, schedule.pending):
            self.store.move_schedule(schedule.name, fire.next_run, fire.pending,
                                     if_last=(schedule.last_job,))
        if fire.note:
            self.announce(f"schedule {schedule.name}: {fire.note} (job {schedule.last_job})")

    def _finish(self, job: JobRow, reason: str) -> None:
        if self.store.finish_unowned(job.id, "failed", reason, owner_gone=owner_gone):
            self.announce(f"job {job.id} ({job.name}): failed: {reason}")

    def _report(self, run: _PoolRun) -> None:
        """Announce each job of `run` once it has ended, and let its controller forget it."""
        for job_id, job in list(run.controller.jobs.items()):
            progress = job.progress
            if progress.state != "running":
                reason = f" ({progress.reason})" if progress.reason else ""
                self.announce(f"job {job_id} ({progress.name}): {progress.state}{reason}: "
                              f"{progress.succeeded}/{progress.total} succeeded, "
                              f"{progress.failed} failed")
                run.controller.forget(job_id)
                run.job_ids.remove(job_id)
                self._failures.pop(job_id, None)

    async def _ended(self, pool: str, run: _PoolRun) -> None:
        """A controller has returned: its pool is idle, or it failed.

        As with `batchpool run`, a controller that failed before any node was set up
        fails its jobs (nothing ran). Otherwise its unfinished jobs stay this service's
        and are taken again by a new controller (see `_claim`), up to
        CONTROLLER_ATTEMPTS times each: an error that comes back every time fails them.
        """
        if run.task.cancelled():
            return
        error = run.task.exception()
        if error is None:
            self.announce(f"pool {pool}: idle, its nodes are shut down")
            return
        reason = (str(error) if isinstance(error, BatchpoolError)
                  else f"{type(error).__name__}: {error}")
        log.error("controller of pool %s failed", pool, exc_info=error)
        self.announce(f"pool {pool}: controller failed: {reason}")
        for job_id in run.job_ids:
            self._failures[job_id] += 1
            if run.controller.nodes and self._failures[job_id] < defaults.CONTROLLER_ATTEMPTS:
                self._stranded.setdefault(pool, set()).add(job_id)   # for a new controller
                continue
            # only a job still owned here and not ended is changed
            await asyncio.to_thread(self.store.finish_owned, job_id, self.owner, "failed",
                                    f"controller failed: {reason}")
            del self._failures[job_id]


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of `events` is set, or `timeout` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
