"""`batchpool submit`: queue a job spec for the controller service."""

from __future__ import annotations

from pathlib import Path

import click

from batchpool.cli.common import (
    checked_job,
    config_option,
    emit_json,
    exit_quickly,
    handle_errors,
    json_option,
    open_store,
    tell_service,
    wait_and_report,
)


@click.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--pool", help="Pool to run on (default: the spec's pool, then the config's).")
@config_option
@click.option("--wait", "wait", is_flag=True,
              help="Then wait for the job to end, like `batchpool job wait` (exit 0 only "
                   "if every task succeeded).")
@json_option
@handle_errors
def submit(spec: str, pool: str | None, config_file: str | None, wait: bool,
           as_json: bool) -> None:
    """Queue SPEC for the controller service and print the job id.

    The spec and the pool are checked first: if either is invalid nothing is queued and
    the exit status is 2. The job runs when `batchpool controller run` (the service) is
    running on the same $BATCHPOOL_HOME; follow it with `batchpool job show ID` or wait
    for it with `batchpool job wait ID` (or `--wait`). Only the id goes to stdout, so
    that `id=$(batchpool submit job.toml)` works; with `--wait --json`, the job's report
    as `job wait --json` prints it.
    """
    job_spec, pool_config = checked_job(spec, pool, config_file)
    store = open_store()
    job_id = store.submit(job_spec, pool_config.name, spec_file=str(Path(spec).resolve()))
    if not as_json:
        click.echo(job_id)
        click.echo(f"job {job_id} ({job_spec.name}) queued on pool {pool_config.name}",
                   err=True)
    served = tell_service(store, job_id)
    if wait:
        exit_quickly(wait_and_report(store, job_id, None, as_json))
    if as_json:
        emit_json({"id": job_id, "name": job_spec.name, "pool": pool_config.name,
                   "state": "queued", "service_running": served})
