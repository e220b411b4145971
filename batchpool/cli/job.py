"""`batchpool job ...`: look at, wait for, cancel, resume jobs and read their results."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click

from batchpool import defaults
from batchpool.cli.common import (
    EXIT_FAILED,
    config_option,
    console,
    emit_json,
    exit_quickly,
    handle_errors,
    json_option,
    open_store,
    retry_backoff_option,
    wait_and_report,
)
from batchpool.cli.run import run_and_report
from batchpool.config import load_config
from batchpool.controller import owner_gone, owner_id
from batchpool.display import counts_table, rows_table
from batchpool.errors import BatchpoolError
from batchpool.pool.providers import check_pool
from batchpool.reports import copy_outputs, job_report, latest_attempt


@click.group()
def job() -> None:
    """Inspect and control jobs."""


@job.command("list")
@click.option("--limit", default=20, show_default=True, help="Show this many recent jobs.")
@click.option("--state", "states", multiple=True,
              type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
              help="Only jobs in this state (repeatable).")
@json_option
@handle_errors
def list_jobs(limit: int, states: tuple[str, ...], as_json: bool) -> None:
    """List recent jobs, newest first."""
    store = open_store()
    jobs = store.jobs(limit=limit, states=states)
    if as_json:
        emit_json([{"id": j.id, "name": j.name, "pool": j.pool, "state": j.state,
                    "reason": j.reason, "submitted": j.submitted, "finished": j.finished}
                   for j in jobs])
        return
    rows = []
    for j in jobs:
        counts = store.counts(j.id)
        total = sum(sum(c.values()) for c in counts.values())
        done = sum(c["succeeded"] for c in counts.values())
        rows.append((j.id, j.name, j.pool, j.state, f"{done}/{total}", _when(j.submitted)))
    console().print(rows_table(("id", "name", "pool", "state", "succeeded", "submitted"), rows))


@job.command()
@click.argument("job_id", type=int)
@json_option
@handle_errors
def show(job_id: int, as_json: bool) -> None:
    """Show a job: state, counts per task group, failed tasks and recent events."""
    store = open_store()
    report = job_report(store, job_id)
    if as_json:
        emit_json(report)
        return
    out = console()
    title = f"job {job_id} {report['name']} on {report['pool']}: {report['state']}"
    if report["reason"]:
        title += f" ({report['reason']})"
    out.print(counts_table(title, report["groups"]))
    if report["failures"]:
        out.print(rows_table(("task", "state", "attempts", "node", "reason"),
                             [(f["task"], f["state"], f["attempts"], f["node"], f["reason"])
                              for f in report["failures"]], title="failed tasks"))
    for settled in report["settled_groups"]:
        out.print(f"{settled['count']} task(s) of {settled['group']} {settled['state']}:"
                  f" {settled['reason']}")
    for group_id, rows in report["per_node"].items():
        out.print(rows_table(("node", "task", "state", "exit", "result or reason"),
                             [(r["node"], r["task"], r["state"], r["exit_code"],
                               r["reason"] if r["result"] is None else
                               json.dumps(r["result"])[:60]) for r in rows],
                             title=f"{group_id}: one task per node"))


@job.command()
@click.argument("job_id", type=int)
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 1).")
@json_option
@handle_errors
def wait(job_id: int, timeout: float | None, as_json: bool) -> None:
    """Wait until a job ends; exit 0 only if every task succeeded."""
    sys.exit(wait_and_report(open_store(), job_id, timeout, as_json))


@job.command()
@click.argument("job_id", type=int)
@json_option
@handle_errors
def cancel(job_id: int, as_json: bool) -> None:
    """Cancel a job: running tasks are killed, queued ones never start.

    A job whose `batchpool run` was killed (or has been silent for 10 s) is marked
    cancelled at once.
    """
    store = open_store()
    job_row = store.request_cancel(job_id)
    # Nobody runs it (queued), or its `batchpool run` is dead: nobody else will act on
    # the request, so the job ends here and now. A live owner stops it itself.
    if not job_row.terminal and store.finish_unowned(
            job_id, "cancelled", "cancelled by user", stale_after=defaults.OWNER_STALE,
            owner_gone=owner_gone):
        job_row = store.job(job_id)
    if as_json:
        emit_json({"id": job_id, "state": job_row.state, "cancel_requested": True})
    elif job_row.terminal:
        click.echo(f"job {job_id}: {job_row.state}")
    else:
        click.echo(f"job {job_id}: cancel requested; {job_row.owner} will stop it")


@job.command()
@click.argument("job_id", type=int)
@click.argument("task_id")
@click.option("--attempt", type=int, help="Which attempt (default: the last).")
@click.option("--stderr", "which", flag_value="stderr", help="Only stderr.")
@click.option("--stdout", "which", flag_value="stdout", help="Only stdout.")
@json_option
@handle_errors
def logs(job_id: int, task_id: str, attempt: int | None, which: str | None,
         as_json: bool) -> None:
    """Print a task's stdout and stderr (TASK is GROUP or GROUP[INDEX], e.g. 'map[7]')."""
    row = latest_attempt(open_store(), job_id, task_id, attempt)
    streams = [which] if which else ["stdout", "stderr"]
    texts = {name: _read(Path(row.dir) / name) for name in streams}
    if as_json:
        emit_json({"task": task_id, "attempt": row.attempt, "node": row.node,
                   "state": row.state, **texts})
        return
    for name, text in texts.items():
        if len(streams) > 1:
            click.echo(f"==> {task_id} attempt {row.attempt} on {row.node}: {name} <==")
        click.echo(text, nl=False)


@job.command()
@click.argument("job_id", type=int)
@click.option("--dest", type=click.Path(file_okay=False), help="Copy outputs into DIR/TASK/.")
@json_option
@handle_errors
def outputs(job_id: int, dest: str | None, as_json: bool) -> None:
    """List the outputs of a job's succeeded tasks, or copy them with --dest.

    With --dest, an output that is a directory is copied with everything in it. Each
    file that cannot be copied is reported on stderr, the rest are still copied, and
    the exit status is then 1.
    """
    store = open_store()
    store.job(job_id)  # an unknown job is an error (exit 2), not "copied 0 file(s)"
    if dest:
        result = copy_outputs(store, job_id, Path(dest))
        for problem in result.errors:
            click.echo(f"error: {problem}", err=True)
        if as_json:
            emit_json([str(p) for p in result.copied])
        else:
            click.echo(f"copied {len(result.copied)} file(s) to {dest}"
                       + (f"; {len(result.errors)} could not be copied" if result.errors
                          else ""))
        if result.errors:
            sys.exit(EXIT_FAILED)
        return
    rows = [(a.task_id, str(Path(a.dir) / o)) for a in store.attempts(job_id)
            if a.state == "succeeded" for o in a.outputs]
    if as_json:
        emit_json([{"task": t, "path": p} for t, p in rows])
    else:
        for task, path in rows:
            click.echo(f"{task}\t{path}")


@job.command()
@click.argument("job_id", type=int)
@click.option("--pool", help="Run on this pool instead of the job's own.")
@config_option
@retry_backoff_option
@json_option
@handle_errors
def resume(job_id: int, pool: str | None, config_file: str | None, retry_backoff: float,
           as_json: bool) -> None:
    """Continue a job whose foreground run was killed: finished tasks are not run again."""
    store = open_store()
    # The pool is checked before the claim, so that a bad config leaves the job as it was.
    job = store.job(job_id)
    if job.spec.executor_session:
        raise BatchpoolError(f"job {job_id} is an Executor session: its calls lived in the "
                             f"process that ran it, so it cannot be resumed; end it with "
                             f"`batchpool job cancel {job_id}`")
    pool_config = load_config(config_file).pool(pool or job.pool)
    check_pool(pool_config)
    job_row = store.claim(job_id, owner_id(), stale_after=defaults.OWNER_STALE,
                          owner_gone=owner_gone)
    click.echo(f"resuming job {job_id} ({job_row.name}) on pool {pool_config.name}", err=True)
    exit_quickly(run_and_report(store, pool_config, job_id, as_json, retry_backoff))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else ""
