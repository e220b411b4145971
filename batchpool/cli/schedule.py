"""`batchpool schedule`: cron schedules that submit a job spec to the controller service."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from batchpool.cli.common import (
    checked_job,
    config_option,
    emit_json,
    handle_errors,
    json_option,
    open_store,
    tell_service,
)

if TYPE_CHECKING:
    from batchpool.store import ScheduleRow, Store


@click.group()
def schedule() -> None:
    """Cron schedules: each submits its job spec when it fires (nightly runs, say).

    The controller service (`batchpool controller run`) fires them: without a running
    service nothing fires, and fires missed meanwhile are made up by one job when it
    starts.
    """


@schedule.command()
@click.argument("name")
@click.option("--cron", "cron", required=True, metavar="EXPR",
              help="Five cron fields: minute hour day-of-month month day-of-week, e.g. "
                   "'0 2 * * *' (02:00 every day) or '*/15 * * * 1-5'.")
@click.option("--spec", "spec", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The job spec to submit; validated and stored now, so later edits of "
                   "the file need `schedule remove` and `add` again.")
@click.option("--tz", "tz", metavar="ZONE",
              help="IANA time zone of the cron fields (default: this machine's, else UTC).")
@click.option("--overlap", type=click.Choice(["skip", "queue", "allow"]), default="skip",
              show_default=True,
              help="When it fires while its last job is unfinished: skip this fire, queue "
                   "one job for when the last ends, or allow both to run.")
@click.option("--pool", help="Pool to run on (default: the spec's pool, then the config's).")
@config_option
@json_option
@handle_errors
def add(name: str, cron: str, spec: str, tz: str | None, overlap: str, pool: str | None,
        config_file: str | None, as_json: bool) -> None:
    """Add schedule NAME: submit SPEC whenever EXPR matches."""
    from batchpool.schedules import check_cron, check_zone, local_zone, next_fire
    from batchpool.store import ScheduleRow

    expression = check_cron(cron)
    zone = tz or local_zone()
    check_zone(zone)
    job_spec, pool_config = checked_job(spec, pool, config_file)
    now = time.time()
    row = ScheduleRow(name=name, cron=expression, tz=zone, overlap=overlap,
                      pool=pool_config.name, spec=job_spec.model_dump_json(),
                      spec_file=str(Path(spec).resolve()), created=now,
                      next_run=next_fire(expression, zone, now), pending=False, last_job=None)
    store = open_store()
    store.add_schedule(row)
    if as_json:
        emit_json(_described(store, row))
    else:
        click.echo(f"schedule {name}: '{expression}' ({zone}), job {job_spec.name} on pool "
                   f"{pool_config.name}; next run {_when(row.next_run, zone)}")


@schedule.command("list")
@json_option
@handle_errors
def list_schedules(as_json: bool) -> None:
    """List schedules: cron, zone, overlap policy, next run, last job and its state."""
    store = open_store()
    rows = [_described(store, row) for row in store.schedules()]
    if as_json:
        emit_json(rows)
        return
    from batchpool.cli.common import console
    from batchpool.display import rows_table

    console().print(rows_table(
        ("name", "cron", "tz", "overlap", "pool", "next run", "last job"),
        [(r["name"], r["cron"], r["tz"], r["overlap"], r["pool"],
          _when(r["next_run"], r["tz"]) + (" (one waiting)" if r["pending"] else ""),
          "" if r["last_job"] is None else f"{r['last_job']} {r['last_job_state']}")
         for r in rows]))


@schedule.command()
@click.argument("name")
@handle_errors
def remove(name: str) -> None:
    """Remove schedule NAME (its jobs stay, and one running goes on)."""
    open_store().remove_schedule(name)
    click.echo(f"schedule {name} removed")


@schedule.command("run")
@click.argument("name")
@json_option
@handle_errors
def run_now(name: str, as_json: bool) -> None:
    """Submit NAME's job now, whatever its cron says (its next run is unchanged)."""
    store = open_store()
    job_id = store.fire_schedule(name)
    assert job_id is not None   # unconditional: only a checked fire can be refused
    served = tell_service(store, job_id)
    if as_json:
        emit_json({"id": job_id, "schedule": name, "service_running": served})
    else:
        click.echo(job_id)


def _described(store: Store, row: ScheduleRow) -> dict[str, Any]:
    from batchpool.errors import NotFound

    state = None
    if row.last_job is not None:
        try:
            state = store.job(row.last_job).state
        except NotFound:
            state = "gone"
    return {"name": row.name, "cron": row.cron, "tz": row.tz, "overlap": row.overlap,
            "pool": row.pool, "spec_file": row.spec_file, "next_run": row.next_run,
            "pending": row.pending, "last_job": row.last_job, "last_job_state": state}


def _when(timestamp: float, zone: str) -> str:
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(timestamp, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")
