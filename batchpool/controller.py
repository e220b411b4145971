"""The controller: one asyncio loop that applies the scheduler's decisions.

It brings up the pool's nodes, feeds agent messages to the pure scheduler, turns the
scheduler's effects into agent messages and store writes, and watches heartbeats.
Every state change goes to the store, so another controller can pick the work up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from batchpool import defaults, paths
from batchpool.config import PoolConfig
from batchpool.pool.providers import NodePlan, plan_pool
from batchpool.pool.session import NodeSession
from batchpool.pool.states import NodeState
from batchpool.progress import JobProgress
from batchpool.scheduler import (
    Effect,
    Finish,
    GroupProgress,
    JobDone,
    Kill,
    Outcome,
    RetryPolicy,
    Scheduler,
    Settle,
    SettleRest,
    Start,
)
from batchpool.spec import JobSpec, TaskGroupSpec, render_command
from batchpool.spec.model import ShardsSpec
from batchpool.spec.placeholders import render_value
from batchpool.spec.shards import block_file
from batchpool.store import Store, StoreWriter
from batchpool.store.writer import FIRST, LAST, ORDERED
from batchpool.transport.base import Transport

log = logging.getLogger(__name__)


def owner_id() -> str:
    """Who runs a job: 'pid@host'."""
    return f"{os.getpid()}@{socket.gethostname()}"


def owner_gone(owner: str) -> bool:
    """True when `owner` is a process on this host that no longer exists."""
    pid, _, host = owner.partition("@")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


#: Where a long-running controller gets more jobs from while it runs: called about once a
#: second, it returns the ids of jobs it has just claimed for this controller's pool.
Intake = Callable[[], Awaitable[list[int]]]


class CallSource(Protocol):
    """Where the Python calls of an open task group come from (the Executor).

    Called on the controller's loop: `submitted` (how many members so far), `closed`
    (no more will come), `payload` (the pickled call of member `position`), `dispatch`
    (just before it is sent; False: its caller cancelled it), `settled` (the member is
    final), `ended` (the job is over).
    """

    def submitted(self) -> int: ...

    def closed(self) -> bool: ...

    def payload(self, position: int) -> str: ...

    def dispatch(self, position: int) -> bool: ...

    def settled(self, position: int, state: str, outcome: Outcome,
                reply: dict[str, Any] | None) -> None: ...

    def ended(self, state: str, reason: str | None) -> None: ...


@dataclass
class _JobRun:
    id: int
    spec: JobSpec
    progress: JobProgress
    groups: dict[str, TaskGroupSpec] = field(default_factory=dict)
    local_links: list[list[str]] = field(default_factory=list)   # resource files, local nodes
    calls: tuple[str, CallSource] | None = None      # (group id, source) of an open group
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> done message
    inputs: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # group -> files

    def __post_init__(self) -> None:
        self.groups = {g.id: g for g in self.spec.tasks}
        self.local_links = [[Path(f).name, f] for f in self.spec.files]


class Controller:
    """Runs jobs on one pool until they end."""

    def __init__(self, store: Store, pool: PoolConfig, *,
                 retry_policy: RetryPolicy | None = None,
                 clock: Callable[[], float] = time.time,
                 connect_timeout: float = defaults.CONNECT_TIMEOUT) -> None:
        self.store = store
        self.pool = pool
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.scheduler = Scheduler(retry_policy)
        self.owner = owner_id()
        self.jobs: dict[int, _JobRun] = {}
        self.nodes: dict[str, NodeSession] = {}
        self._writer: StoreWriter | None = None
        self._wake = asyncio.Event()
        self._extra: dict[str, tuple[float | None, list[str], str | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._results_root = paths.work_root()
        self._results = f"{self._results_root}/"
        self._started: dict[str, float] = {}
        self._mean_wall: float | None = None      # moving average of attempt durations
        self._prefetch = 1   # tasks sent to a node per slot: see _observe_duration
        self._refill_pending = False   # a _refill is due on the next loop turn
        self._call_sources: dict[int, tuple[str, CallSource]] = {}
        self._owner_seen = 0.0  # when owner_seen was last refreshed
        self._node_names: tuple[str, ...] = ()   # the pool's planned nodes
        self._intake_due = False   # poke(): the intake is asked on the next turn

    # -- running jobs ------------------------------------------------------------------
    async def run(self, job_ids: list[int], intake: Intake | None = None,
                  linger: float = 0.0) -> dict[int, JobProgress]:
        """Run the given (already claimed) jobs to their end; returns their progress.

        With an `intake` (the controller service), jobs it hands over are run too, and
        the pool stays up until no job has run for `linger` seconds.
        """
        self._writer = self.store.writer()
        try:
            transport, plans = plan_pool(self.pool)
            self._node_names = tuple(plan.address.name for plan in plans)
            await self._take(job_ids, alone=intake is not None)
            await self._start_nodes(transport, plans)
            await self._loop(intake, linger)
        finally:
            await self._shutdown()
        return {job_id: run.progress for job_id, run in self.jobs.items()}

    async def _take(self, job_ids: list[int], alone: bool = False) -> None:
        """Add claimed jobs to the run (before the nodes start, or while they run).

        An error taking a job propagates (the caller fails the jobs that were to start),
        unless `alone` (the controller service): then each job that cannot be taken fails
        on its own, and the others run.
        """
        names = self._node_names
        for job_id in job_ids:
            try:
                await self._place(job_id, names)
                await self._add_job(job_id)
            except Exception as exc:
                if not alone:
                    raise
                log.exception("could not take job %s", job_id)
                await self._fail_untaken(job_id, f"could not start: {exc}")
                continue
            strangers = {node for group in self.jobs[job_id].spec.tasks
                         for node in group.pinned or () if node not in names}
            for node in sorted(strangers):  # their pinned tasks fail rather than wait forever
                self._apply(self.scheduler.remove_node(
                    node, self.clock(), f"not a node of pool {self.pool.name!r}"))
        self._wake.set()

    async def _fail_untaken(self, job_id: int, reason: str) -> None:
        effects = self.scheduler.cancel_job(job_id, reason, state="failed")
        if effects:   # the scheduler had it: it ends it as any failed job
            self._apply(effects)
            return
        self.jobs.pop(job_id, None)
        await asyncio.to_thread(self.store.finish_owned, job_id, self.owner, "failed", reason)

    def forget(self, job_id: int) -> None:
        """Drop an ended job, so that a controller that runs for days does not keep them
        all (the scheduler drops its own as they end)."""
        run = self.jobs.get(job_id)
        if run is not None and run.progress.state != "running":
            del self.jobs[job_id]
            self._call_sources.pop(job_id, None)

    def poke(self) -> None:
        """New jobs may be waiting for this pool: ask the intake now, not within a second."""
        self._intake_due = True
        self._wake.set()

    def attach_calls(self, job_id: int, group_id: str, source: CallSource) -> None:
        """Feed the open group `group_id` of job `job_id` from `source` (before `run`)."""
        self._call_sources[job_id] = (group_id, source)

    def grow_calls(self, job_id: int, size: int) -> None:
        """The open group now has `size` members (on the loop's thread)."""
        run = self.jobs[job_id]
        assert run.calls is not None
        run.progress.total = size
        self.scheduler.grow(job_id, run.calls[0], size)
        self._write("UPDATE groups SET size=? WHERE job_id=? AND group_id=?",
                    (size, job_id, run.calls[0]))
        self._apply(self.scheduler.schedule(self.clock()))

    def seal_calls(self, job_id: int) -> None:
        """No more calls will come: the job ends when they are done."""
        run = self.jobs.get(job_id)
        if run is None or run.calls is None:  # not started yet: it will ask `closed`
            return
        self._apply(self.scheduler.seal(job_id, run.calls[0]))
        self._wake.set()

    def cancel(self, job_id: int, reason: str = "cancelled by user") -> None:
        """Cancel a job from inside the loop's thread (e.g. on Ctrl-C)."""
        self._apply(self.scheduler.cancel_job(job_id, reason))
        self._wake.set()

    async def _place(self, job_id: int, nodes: tuple[str, ...]) -> None:
        """Fix `on_every_node = true` groups to the pool's nodes, in the store, for good."""
        spec = (await asyncio.to_thread(self.store.job, job_id)).spec
        if not spec.unplaced:
            return
        placed = spec.on_nodes(nodes)
        self._write("UPDATE jobs SET spec=? WHERE id=?", (placed.model_dump_json(), job_id))
        for group in placed.tasks:
            if group.pinned is not None:
                self._write("UPDATE groups SET size=? WHERE job_id=? AND group_id=?",
                            (group.size, job_id, group.id))
        assert self._writer is not None
        await asyncio.to_thread(self._writer.flush)

    async def _add_job(self, job_id: int) -> None:
        job = await asyncio.to_thread(self.store.job, job_id)
        spec = job.spec
        saved = await asyncio.to_thread(_saved_progress, self.store, job_id)
        total = sum(g.size for g in spec.tasks)
        progress = JobProgress(job_id, spec.name, total, started=self.clock())
        for group in saved:
            progress.succeeded += group.succeeded
            progress.failed += group.failed + (
                spec.group(group.group_id).size - group.dispatched
                if group.rest_state == "failed" else 0)
            progress.cancelled += group.cancelled + (
                spec.group(group.group_id).size - group.dispatched
                if group.rest_state == "cancelled" else 0)
        run = self.jobs[job_id] = _JobRun(job_id, spec, progress)
        self._apply(self.scheduler.add_job(job_id, spec, self.clock(), saved))
        if job_id in self._call_sources:
            run.calls = self._call_sources[job_id]
            progress.total = 0
            self.grow_calls(job_id, run.calls[1].submitted())
            if run.calls[1].closed():
                self.seal_calls(job_id)

    async def _loop(self, intake: Intake | None, linger: float) -> None:
        housekeeping = 0.0
        idle_since: float | None = None
        while True:
            now = self.clock()
            if any(run.progress.state == "running" for run in self.jobs.values()):
                idle_since = None
            else:
                idle_since = now if idle_since is None else idle_since
                # a foreground run ends with its jobs; a service's pool waits `linger` for
                # more, unless no node is left (a later job then starts the pool afresh)
                if intake is None or now - idle_since >= linger or not self._usable():
                    break
            self._apply(self.scheduler.expire(now) + self.scheduler.schedule(now))
            if now >= housekeeping:
                housekeeping = now + 1.0
                await self._housekeeping(now)
                self._intake_due = True
            if intake is not None and self._intake_due:
                self._intake_due = False
                await self._take(await intake(), alone=True)
            wake = self.scheduler.next_wakeup()
            timeout = min(1.0, max(0.0, (wake or now + 1.0) - now), housekeeping - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(timeout, 0.001))
            self._wake.clear()

    def _usable(self) -> bool:
        """Whether any node is up or still coming up."""
        return any(n.ready or n.state in (NodeState.CONNECTING, NodeState.STARTING)
                   for n in self.nodes.values())

    async def _housekeeping(self, now: float) -> None:
        """Heartbeats, cancel requests from other processes, ownership, node rows."""
        for node in list(self.nodes.values()):
            silent = now - node.last_seen
            if node.ready and silent > self.pool.heartbeat_timeout:
                self._node_lost(node, f"no heartbeat for {silent:.0f}s")
        if not self._usable():
            reasons = "; ".join(f"{n.name}: {n.state} ({n.reason})" for n in self.nodes.values())
            for job_id, run in self.jobs.items():
                if run.progress.state == "running":
                    self._apply(self.scheduler.cancel_job(
                        job_id, f"no usable node in pool {self.pool.name!r}: {reasons}",
                        state="failed"))
        mine = [j for j, run in self.jobs.items() if run.progress.state == "running"]
        if mine:
            requested = await asyncio.to_thread(_cancel_requests, self.store, mine)
            for job_id in requested:
                self._apply(self.scheduler.cancel_job(job_id))
            if now >= self._owner_seen + defaults.OWNER_HEARTBEAT:
                self._owner_seen = now
                marks = ",".join("?" * len(mine))
                self._write(f"UPDATE jobs SET owner_seen=? WHERE id IN ({marks})",
                            (now, *mine))
        self._write_nodes(now)

    # -- nodes ---------------------------------------------------------------------------
    async def _start_nodes(self, transport: Transport, plans: list[NodePlan]) -> None:
        for plan in plans:
            session = NodeSession(plan.address, transport, plan.settings,
                                  self._on_message, self._on_lost)
            self.nodes[session.name] = session
        self._write_nodes(self.clock())
        for node in self.nodes.values():  # in the background: work starts on the first up
            self._spawn(self._bring_up(node))

    async def _bring_up(self, node: NodeSession) -> None:
        calls = sum(group.size for run in self.jobs.values() for group in run.spec.tasks
                    if group.call)
        if self._call_sources:  # an Executor: any number of calls may come
            calls = sys.maxsize
        await node.start(self.connect_timeout, calls)
        if node.ready:
            self.scheduler.add_node(node.name, node.slots * self._prefetch)
        else:  # its tasks pinned to it (on_every_node) fail; the rest run elsewhere
            self._apply(self.scheduler.remove_node(node.name, self.clock(),
                                                   f"{node.state}: {node.reason}"))
        self._write_nodes(self.clock())
        self._wake.set()

    def _on_lost(self, node: NodeSession, reason: str) -> None:
        self._node_lost(node, reason)

    def _node_lost(self, node: NodeSession, reason: str) -> None:
        if node.state == NodeState.UNREACHABLE:
            return  # already handled: the first reason stands
        log.warning("node %s unreachable: %s", node.name, reason)
        node.lost(reason)
        self._apply(self.scheduler.remove_node(node.name, self.clock(), reason))
        self._write_nodes(self.clock())
        self._wake.set()

    def _write_nodes(self, now: float) -> None:
        for node in self.nodes.values():
            running = len(self.scheduler.running_on(node.name)) if node.ready else 0
            state = node.state
            if state in (NodeState.IDLE, NodeState.RUNNING):
                state = NodeState.RUNNING if running else NodeState.IDLE
                node.move(state)
            self._write(
                "INSERT INTO nodes (pool, name, address, state, reason, slots, running, load,"
                " heartbeat, updated) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (pool, name) DO"
                " UPDATE SET address=excluded.address, state=excluded.state,"
                " reason=excluded.reason, slots=excluded.slots, running=excluded.running,"
                " load=excluded.load, heartbeat=excluded.heartbeat, updated=excluded.updated",
                (self.pool.name, node.name, node.address.host, str(state), node.reason,
                 node.slots, running, node.load, node.last_seen, now))

    # -- agent messages -----------------------------------------------------------------
    def _on_message(self, node: NodeSession, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "done":
            self._on_done(node, message)
        elif op == "error":
            log.warning("agent on %s: %s", node.name, message.get("error"))

    def _on_done(self, node: NodeSession, message: dict[str, Any]) -> None:
        key = str(message["key"])
        outcome = Outcome(exit_code=message.get("exit"), signal=message.get("signal"),
                          timed_out=bool(message.get("timed_out")),
                          cancelled=bool(message.get("cancelled")), error=message.get("error"))
        matched: dict[str, list[str]] = message.get("outputs") or {}
        outputs = sorted({path for paths_ in matched.values() for path in paths_})
        if outcome.succeeded:
            missing = [glob for glob, found in matched.items() if not found]
            if missing:
                outcome = Outcome(exit_code=0, error=f"output {missing[0]!r} matched no file")
        run = self.jobs.get(int(key.split("/", 1)[0]))
        if run is not None and run.calls is not None:
            run.replies[key] = message
        result = message.get("result")
        self._extra[key] = (message.get("cpu"), outputs,
                            result if isinstance(result, str) else None)
        self._observe_duration(message.get("wall"))
        if node.shares_results:
            self._finished(key, outcome)
            return
        inline = message.get("files")
        inline = inline if isinstance(inline, dict) else {}
        wanted = ["stdout", "stderr", *outputs]
        fetch = [name for name in wanted if name not in inline]
        # empty logs are not written: a missing log reads as empty
        write = {name: inline[name] for name in wanted
                 if name in inline and (inline[name] or name in outputs)}
        if fetch or write:
            self._spawn(self._collect_then_finish(node, key, outcome, write, fetch))
        else:
            self._finished(key, outcome)  # the common case of short tasks: no I/O at all

    def _observe_duration(self, wall: object) -> None:
        """Track how long attempts take; send short tasks ahead to the nodes."""
        if not isinstance(wall, int | float):
            return
        mean = wall if self._mean_wall is None else 0.9 * self._mean_wall + 0.1 * wall
        self._mean_wall = mean
        prefetch = prefetch_depth(mean)
        if prefetch != self._prefetch:
            self._prefetch = prefetch
            for node in self.nodes.values():
                if node.ready:
                    self.scheduler.add_node(node.name, node.slots * prefetch)

    async def _collect_then_finish(self, node: NodeSession, key: str, outcome: Outcome,
                                   write: dict[str, str], fetch: list[str]) -> None:
        """Save the files the agent sent in `done`, download the others, then finish."""
        local = self._results_root / attempt_dir(key)
        try:
            if write:
                await asyncio.to_thread(_write_files, local, write)
            for name in fetch:
                await node.download(f"{attempt_dir(key)}/{name}", local / name)
        except Exception as exc:  # a failed copy fails the attempt, it may be retried
            if outcome.succeeded:
                outcome = Outcome(exit_code=0, error=f"could not fetch outputs: {exc}")
        self._finished(key, outcome)

    def _finished(self, key: str, outcome: Outcome) -> None:
        self._apply(self.scheduler.finished(key, outcome, self.clock()))
        # refill the freed slots on the next turn of the loop, once for all the results of
        # a read (an agent reports many short tasks at once), not through the main loop,
        # which only wakes for timers, node changes and job ends
        if not self._refill_pending:
            self._refill_pending = True
            asyncio.get_running_loop().call_soon(self._refill)

    def _refill(self) -> None:
        self._refill_pending = False
        self._apply(self.scheduler.schedule(self.clock()))

    # -- effects -------------------------------------------------------------------------
    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Start):
                self._start(effect)
            elif isinstance(effect, Finish):
                self._record_finish(effect)
            elif isinstance(effect, Kill):
                node = self.nodes.get(effect.node)
                if node is not None:
                    node.send({"op": "kill", "key": effect.key})
            elif isinstance(effect, Settle):
                self._settle(effect)
            elif isinstance(effect, SettleRest):
                self._settle_rest(effect)
            elif isinstance(effect, JobDone):
                self._job_done(effect)

    def _start(self, start: Start) -> None:
        run = self.jobs[start.job_id]
        group = run.groups[start.group_id]
        node = self.nodes[start.node]
        now = self.clock()
        run.progress.running += 1
        self._started[start.key] = now
        if start.first:
            self._write("INSERT INTO tasks (job_id, task_id, group_id, position, state, node,"
                        " started) VALUES (?,?,?,?,'running',?,?)",
                        (start.job_id, start.task_id, group.id, start.position, start.node, now),
                        FIRST)
        else:
            self._write("UPDATE tasks SET state='running', node=?, started=? WHERE job_id=? AND"
                        " task_id=?", (start.node, now, start.job_id, start.task_id))
        if run.calls is not None and group.id == run.calls[0] and \
                not run.calls[1].dispatch(start.position):
            # its caller cancelled it; finished on the next turn of the loop, not here:
            # thousands of cancelled calls in a row would otherwise recurse that deep
            asyncio.get_running_loop().call_soon(self._finished, start.key,
                                                 Outcome(cancelled=True))
            return
        message = self._run_message(run, group, start, node)
        if group.depends_on or group.shards or (run.spec.files and not node.shares_results):
            self._spawn(self._stage_and_send(run, group, start, node, message))
        else:
            node.send(message)

    def _run_message(self, run: _JobRun, group: TaskGroupSpec, start: Start,
                     node: NodeSession) -> dict[str, Any]:
        index = "" if start.index is None else str(start.index)
        values: dict[str, Any] = {"index": index, **start.params, "task_id": start.task_id,
                                  "job_id": start.job_id, "attempt": start.attempt,
                                  "node": node.name}
        call: dict[str, Any] | None = None
        if run.calls is not None and group.id == run.calls[0]:
            call = {"pickle": run.calls[1].payload(start.position)}
        elif group.call is not None:
            typed = {**values, "index": start.index}  # "{index}" alone stays an int
            call = {"target": group.call, "args": render_value(list(group.args), typed),
                    "kwargs": render_value(dict(group.kwargs), typed)}
        command = render_command(group.command, values) if group.command is not None else None
        env = {**run.spec.env, **group.env,
               "BATCHPOOL_JOB_ID": str(start.job_id), "BATCHPOOL_TASK_ID": start.task_id,
               "BATCHPOOL_TASK_INDEX": index,
               "BATCHPOOL_ATTEMPT": str(start.attempt), "BATCHPOOL_NODE": node.name,
               "BATCHPOOL_INPUTS_DIR": node.node_path(f"{attempt_dir(start.key)}/inputs")}
        links = run.local_links if node.shares_results else []
        message = {"op": "run", "key": start.key, "cmd": command, "dir": attempt_dir(start.key),
                   "env": env, "timeout": group.timeout, "links": links,
                   "outputs": list(group.outputs),
                   "inline": 0 if node.shares_results else defaults.INLINE_BYTES}
        if call is not None:
            message["call"] = call
        return message

    async def _stage_and_send(self, run: _JobRun, group: TaskGroupSpec, start: Start,
                              node: NodeSession, message: dict[str, Any]) -> None:
        try:
            links: list[list[str]] = []
            for file in run.spec.files:
                links.append([Path(file).name, await node.stage_file(Path(file))])
            for dep in group.depends_on:
                for task_id, output, source in await self._inputs_of(run, dep):
                    name = f"inputs/{task_id}/{output}"
                    if node.shares_results:
                        links.append([name, str(self._results_root / source)])
                    else:
                        await node.upload(self._results_root / source,
                                          f"{attempt_dir(start.key)}/{name}")
            if group.shards is not None:
                shard = await asyncio.to_thread(_shard_file, group.shards, start.position)
                staged = str(shard) if node.shares_results else await node.stage_file(shard)
                links.append([group.shards.path_name(start.position), staged])
            message["links"] = links
        except Exception as exc:
            log.warning("staging for %s on %s failed: %s", start.key, node.name, exc)
            self._finished(start.key, Outcome(error=f"staging failed: {exc}"))
            return
        node.send(message)

    async def _inputs_of(self, run: _JobRun, group_id: str) -> list[tuple[str, str, str]]:
        """(task id, output name, path under the results root) of a group's outputs."""
        if group_id not in run.inputs:
            assert self._writer is not None
            await asyncio.to_thread(self._writer.flush)
            run.inputs[group_id] = await asyncio.to_thread(
                _group_outputs, self.store, run.id, group_id, self._results_root)
        return run.inputs[group_id]

    def _record_finish(self, finish: Finish) -> None:
        now = self.clock()
        run = self.jobs[finish.job_id]
        key = f"{finish.job_id}/{finish.task_id}/{finish.attempt}"
        started = self._started.pop(key, now)
        if finish.node:  # a lost attempt found on resume already has its row
            run.progress.running -= 1
        cpu, outputs, result = self._extra.pop(key, (None, [], None))
        self._write("INSERT OR REPLACE INTO attempts (job_id, task_id, attempt, node, state,"
                    " started, finished, exit_code, signal, cpu, dir, outputs, reason, result)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (finish.job_id, finish.task_id, finish.attempt, finish.node or "?",
                     finish.attempt_state, started, now, finish.outcome.exit_code,
                     finish.outcome.signal, cpu, self._results + attempt_dir(key),
                     json.dumps(outputs) if outputs else None, finish.reason, result), LAST)
        lost = 1 if finish.attempt_state == "lost" else 0
        self._write("UPDATE tasks SET state=?, attempts=attempts+?, lost=lost+?, exit_code=?,"
                    " signal=?, reason=?, finished=? WHERE job_id=? AND task_id=?",
                    (finish.final or "queued", int(finish.counted), lost,
                     finish.outcome.exit_code, finish.outcome.signal, finish.reason,
                     now if finish.final else None, finish.job_id, finish.task_id))
        if finish.final:
            self._count(finish.job_id, finish.final, 1)
            run.progress.finished_now += 1
            if run.calls is not None and finish.group_id == run.calls[0]:
                run.calls[1].settled(_position(finish.task_id), finish.final, finish.outcome,
                                     run.replies.pop(key, None))
        else:
            run.replies.pop(key, None)
        if finish.final != "succeeded":
            self._write("INSERT INTO events (time, job_id, task_id, kind, detail) VALUES"
                        " (?,?,?,?,?)", (now, finish.job_id, finish.task_id,
                                         f"attempt {finish.attempt_state}",
                                         json.dumps({"attempt": finish.attempt,
                                                     "node": finish.node,
                                                     "reason": finish.reason,
                                                     "final": finish.final})))

    def _settle(self, settle: Settle) -> None:
        self._count(settle.job_id, settle.state, 1)
        if settle.new_row is not None:
            group_id, position = settle.new_row
            self._write("INSERT INTO tasks (job_id, task_id, group_id, position, state, reason,"
                        " finished) VALUES (?,?,?,?,?,?,?)",
                        (settle.job_id, settle.task_id, group_id, position, settle.state,
                         settle.reason, self.clock()))
        else:
            self._write("UPDATE tasks SET state=?, reason=?, finished=? WHERE job_id=?"
                        " AND task_id=?", (settle.state, settle.reason, self.clock(),
                                           settle.job_id, settle.task_id))

    def _settle_rest(self, settle: SettleRest) -> None:
        self._count(settle.job_id, settle.state, settle.count)
        self._write("UPDATE groups SET rest_state=?, rest_reason=? WHERE job_id=? AND"
                    " group_id=?", (settle.state, settle.reason, settle.job_id, settle.group_id))
        self._write("INSERT INTO events (time, job_id, task_id, kind, detail) VALUES (?,?,?,?,?)",
                    (self.clock(), settle.job_id, settle.group_id, f"group {settle.state}",
                     json.dumps({"reason": settle.reason})))

    def _job_done(self, done: JobDone) -> None:
        run = self.jobs[done.job_id]
        if run.calls is not None:
            run.calls[1].ended(done.state, done.reason)
        run.progress.state, run.progress.reason = done.state, done.reason
        now = self.clock()
        self._write("UPDATE jobs SET state=?, reason=?, finished=?, owner=NULL WHERE id=?",
                    (done.state, done.reason, now, done.job_id))
        self._write("INSERT INTO events (time, job_id, kind, detail) VALUES (?,?,?,?)",
                    (now, done.job_id, f"job {done.state}", json.dumps({"reason": done.reason})))
        self._wake.set()

    def _count(self, job_id: int, state: str, n: int) -> None:
        progress = self.jobs[job_id].progress
        setattr(progress, state, getattr(progress, state) + n)

    # -- plumbing ------------------------------------------------------------------------
    def _write(self, sql: str, params: tuple[Any, ...], phase: int = ORDERED) -> None:
        assert self._writer is not None
        self._writer.execute(sql, params, phase)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shutdown(self) -> None:
        for task in list(self._background):
            task.cancel()
        for node in self.nodes.values():
            if node.state not in (NodeState.UNUSABLE, NodeState.UNREACHABLE):
                node.move(NodeState.LEAVING, "controller stopped")
        await asyncio.gather(*(n.close() for n in self.nodes.values()), return_exceptions=True)
        for node in self.nodes.values():
            if node.state == NodeState.LEAVING:
                node.move(NodeState.OFFLINE, "no controller is running")
        if self._writer is not None:
            self._write_nodes(self.clock())
            await asyncio.to_thread(self._writer.close)
            self._writer = None


def prefetch_depth(mean_wall: float) -> int:
    """Tasks to send a node per slot when attempts take `mean_wall` seconds on average:
    one running, and enough waiting to cover PREFETCH_AHEAD (defaults.py)."""
    ahead = int(defaults.PREFETCH_AHEAD / mean_wall) if mean_wall > 0 else defaults.PREFETCH_MAX
    return max(1, min(defaults.PREFETCH_MAX, 1 + ahead))


def _write_files(directory: Path, files: dict[str, str]) -> None:
    """Write base64-encoded file contents (from an agent's `done`) under `directory`."""
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


def attempt_dir(key: str) -> str:
    """The attempt's directory, relative to the node's workdir (and the results root).

    ``1/map[7]/2`` becomes ``1/map@7/2``: brackets in $BATCHPOOL_INPUTS_DIR would make
    a shell glob over it (``$BATCHPOOL_INPUTS_DIR/*/part.json``) match nothing. Task ids
    never contain ``@``, so no two attempts share a directory.
    """
    return key.replace("[", "@").replace("]", "")


def _shard_file(shards: ShardsSpec, position: int) -> Path:
    """The local file of shard `position` (a row block is cut out on first use)."""
    if shards.npy is not None and shards.count is not None:
        return block_file(shards.npy, shards.count, position)
    return Path(shards.files[position])


def _position(task_id: str) -> int:
    """The array index of ``group[7]`` (an open group's index is its position)."""
    return int(task_id[task_id.rindex("[") + 1:-1])


def _saved_progress(store: Store, job_id: int) -> list[GroupProgress]:
    """What the store knows of each group: the restart point of a resumed job."""
    result = []
    tasks = store.tasks(job_id)
    for group in store.groups(job_id):
        mine = [t for t in tasks if t.group_id == group.group_id]
        counts = {s: sum(1 for t in mine if t.state == s)
                  for s in ("succeeded", "failed", "cancelled")}
        unfinished = tuple((t.position, t.attempts, t.lost, t.state == "running")
                           for t in mine if t.state in ("queued", "running"))
        result.append(GroupProgress(group.group_id, group.dispatched, group.rest_state,
                                    unfinished=unfinished, **counts))
    return result


def _cancel_requests(store: Store, job_ids: list[int]) -> list[int]:
    with store.reading() as db:
        marks = ",".join("?" * len(job_ids))
        rows = db.execute(f"SELECT id FROM jobs WHERE cancel_requested=1 AND id IN ({marks})",
                          job_ids).fetchall()
    return [r[0] for r in rows]


def _group_outputs(store: Store, job_id: int, group_id: str,
                   root: Path) -> list[tuple[str, str, str]]:
    """Each (task id, output name, path under `root`) of a group's succeeded attempts."""
    with store.reading() as db:
        rows = db.execute(
            "SELECT a.task_id, a.dir, a.outputs FROM attempts a JOIN tasks t ON"
            " t.job_id=a.job_id AND t.task_id=a.task_id WHERE a.job_id=? AND t.group_id=?"
            " AND a.state='succeeded' ORDER BY t.position", (job_id, group_id)).fetchall()
    result = []
    for task_id, directory, outputs in rows:
        relative = Path(directory).relative_to(root)
        for output in json.loads(outputs or "[]"):
            result.append((task_id, output, str(relative / output)))
    return result
