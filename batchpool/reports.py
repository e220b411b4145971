"""Job reports built from the store: what `job show`, `run --json` and `job wait` print."""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchpool.errors import NotFound
from batchpool.store import AttemptRow, Store


def job_report(store: Store, job_id: int, failures: int = 50) -> dict[str, Any]:
    """A job's state, per-group counts and its failed tasks (the first `failures`)."""
    job = store.job(job_id)
    counts = store.counts(job_id)
    totals = {state: sum(c[state] for c in counts.values())
              for state in ("succeeded", "failed", "cancelled", "running", "queued")}
    failed = store.tasks(job_id, states=("failed", "cancelled"))[:failures]
    rest = [(g.group_id, g.rest_state, g.rest_reason, g.size - g.dispatched)
            for g in store.groups(job_id) if g.rest_state and g.size > g.dispatched]
    return {
        "id": job.id, "name": job.name, "pool": job.pool, "state": job.state,
        "reason": job.reason, "priority": job.priority, "submitted": job.submitted,
        "started": job.started, "finished": job.finished, "spec_file": job.spec_file,
        "owner": job.owner, "total": sum(totals.values()), **totals, "groups": counts,
        "failures": [{"task": t.task_id, "state": t.state, "reason": t.reason,
                      "attempts": t.attempts, "lost": t.lost, "exit_code": t.exit_code,
                      "node": t.node} for t in failed],
        "settled_groups": [{"group": g, "state": s, "reason": r, "count": n}
                           for g, s, r, n in rest],
        "per_node": per_node(store, job_id),
    }


def per_node(store: Store, job_id: int) -> dict[str, list[dict[str, Any]]]:
    """For each ``on_every_node`` group: one row per node, its task's state and result.

    Nothing for a job whose stored spec cannot be read (written by another version): its
    state and counts are still worth showing.
    """
    try:
        spec = store.job(job_id).spec
    except ValueError:  # pydantic's ValidationError
        return {}
    groups = {g.id: g.pinned for g in spec.tasks if g.pinned is not None}
    if not groups:
        return {}
    tasks = {t.task_id: t for t in store.tasks(job_id) if t.group_id in groups}
    results = {a.task_id: a.result for a in store.attempts(job_id)
               if a.task_id in tasks and a.state == "succeeded"}
    table: dict[str, list[dict[str, Any]]] = {}
    for group_id, nodes in groups.items():
        rows = table[group_id] = []
        for position, node in enumerate(nodes):
            task_id = f"{group_id}[{position}]"
            task = tasks.get(task_id)
            result = results.get(task_id)
            rows.append({"node": node, "task": task_id,
                         "state": task.state if task else "queued",
                         "exit_code": task.exit_code if task else None,
                         "reason": task.reason if task else None,
                         "result": json.loads(result) if result else None})
    return table


def latest_attempt(store: Store, job_id: int, task_id: str,
                   attempt: int | None = None) -> AttemptRow:
    """The chosen (default: last) attempt of a task."""
    attempts = store.attempts(job_id, task_id)
    if not attempts:
        raise NotFound(f"job {job_id} has no attempt of task {task_id!r} yet")
    if attempt is None:
        return attempts[-1]
    for row in attempts:
        if row.attempt == attempt:
            return row
    raise NotFound(f"task {task_id!r} of job {job_id} has no attempt {attempt}")


@dataclass
class CopyResult:
    """What `copy_outputs` did: the files it wrote, and one message per failure."""

    copied: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def copy_outputs(store: Store, job_id: int, dest: Path) -> CopyResult:
    """Copy the outputs of every succeeded task to dest/TASK/...

    An output may be a directory (its whole tree is copied). Nothing raises for a file
    that cannot be copied: it becomes one message in `errors`, and the rest is copied.
    """
    result = CopyResult()
    for row in store.attempts(job_id):
        if row.state != "succeeded":
            continue
        trees: list[Path] = []  # directories copied whole: what is inside is done
        for output in sorted(row.outputs):
            relative = Path(output)
            if any(relative.is_relative_to(tree) for tree in trees):
                continue
            source = Path(row.dir) / relative
            if source.is_dir():
                trees.append(relative)
            _copy(source, dest / row.task_id / relative, f"{row.task_id}/{output}", result)
    return result


def _copy(source: Path, target: Path, name: str, result: CopyResult) -> None:
    def copy_file(src: str, dst: str) -> object:
        if os.path.isdir(dst):  # copy2 would quietly copy into it instead
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way", dst)
        copied = shutil.copy2(src, dst)
        result.copied.append(Path(dst))
        return copied

    try:
        if source.is_dir():
            shutil.copytree(source, target, copy_function=copy_file, dirs_exist_ok=True)
        elif not source.exists():
            result.errors.append(f"cannot copy {name}: {source} no longer exists")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_file(str(source), str(target))
    except shutil.Error as exc:  # copytree copies what it can, then lists the rest
        problems = exc.args[0] if exc.args and isinstance(exc.args[0], list) else [exc]
        for problem in problems:
            detail = (f"{problem[0]}: {problem[2]}" if isinstance(problem, tuple)
                      and len(problem) == 3 else str(problem))
            result.errors.append(f"cannot copy {name}: {detail}")
    except OSError as exc:
        result.errors.append(f"cannot copy {name} to {target}: "
                             f"{exc.strerror or exc}")
