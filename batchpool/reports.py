"""Job reports built from the store: what `job show`, `run --json` and `job wait` print."""

from __future__ import annotations

import shutil
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
    }


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


def copy_outputs(store: Store, job_id: int, dest: Path) -> list[Path]:
    """Copy the outputs of every succeeded task to dest/TASK/...; returns the new files."""
    copied = []
    for row in store.attempts(job_id):
        if row.state != "succeeded":
            continue
        for output in row.outputs:
            source = Path(row.dir) / output
            target = dest / row.task_id / output
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            copied.append(target)
    return copied
