"""`batchpool run`: submit a spec and run it in the foreground on a pool."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from batchpool.cli.common import (
    EXIT_FAILED,
    config_option,
    console,
    emit_json,
    exit_quickly,
    gc_paused,
    handle_errors,
    json_option,
    open_store,
    retry_backoff_option,
)

if TYPE_CHECKING:
    from batchpool.config import PoolConfig
    from batchpool.display import LiveDisplay
    from batchpool.progress import JobProgress
    from batchpool.store import Store


@click.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--pool", help="Pool to run on (default: the spec's pool, then the config's).")
@config_option
@retry_backoff_option
@json_option
@handle_errors
def run(spec: str, pool: str | None, config_file: str | None, retry_backoff: float,
        as_json: bool) -> None:
    """Submit SPEC and run it in the foreground, with live progress.

    Exits 0 only if every task succeeded, 1 if any failed or the job was cancelled,
    2 if the spec or the config is invalid (nothing runs then). Ctrl-C cancels the
    job; `batchpool job resume ID` continues a job whose run was killed.
    """
    from batchpool.pool.local import settle_early_agent, start_agent_early

    if pool in (None, "local"):  # its interpreter starts while this one imports the rest
        start_agent_early()
    with gc_paused():
        from batchpool.config import load_config
        from batchpool.controller import owner_id
        from batchpool.pool.providers import check_pool
        from batchpool.spec import load_spec

    config = load_config(config_file)
    job_spec = load_spec(spec)
    pool_config = config.pool(pool or job_spec.pool)
    settle_early_agent(pool_config)
    check_pool(pool_config)  # a pool that cannot work is refused before the job is recorded
    store = open_store()
    job_id = store.submit(job_spec, pool_config.name, spec_file=str(Path(spec).resolve()),
                          state="running", owner=owner_id())
    click.echo(f"job {job_id} ({job_spec.name}) on pool {pool_config.name}", err=True)
    exit_quickly(run_and_report(store, pool_config, job_id, as_json, retry_backoff))


def run_and_report(store: Store, pool_config: PoolConfig, job_id: int, as_json: bool,
                   retry_backoff: float) -> int:
    """Run a claimed job in the foreground, print its summary; returns the exit status."""
    import asyncio

    from batchpool.reports import job_report
    from batchpool.runner import run_jobs
    from batchpool.scheduler import RetryPolicy

    results = asyncio.run(run_jobs(store, pool_config, [job_id],
                                   display=None if as_json else _live_display,
                                   retry_policy=RetryPolicy(base=retry_backoff)))
    progress = results[job_id]
    report = job_report(store, job_id)
    if as_json:
        emit_json(report)
    else:
        from batchpool.display import counts_table

        out = console()
        out.print(counts_table(f"job {job_id} {progress.name}: {progress.state}"
                               + (f" ({progress.reason})" if progress.reason else ""),
                               store.counts(job_id)))
        for failure in report["failures"][:10]:
            out.print(f"[red]failed[/red] {failure['task']}: {failure['reason']}"
                      f"  (logs: batchpool job logs {job_id} '{failure['task']}')")
    return 0 if progress.state == "succeeded" else EXIT_FAILED


def _live_display(progress: JobProgress) -> LiveDisplay:
    from batchpool.display import LiveDisplay  # rich: imported once the tasks are going

    return LiveDisplay(progress)
