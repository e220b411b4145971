"""Options and helpers shared by the commands (kept thin: the logic lives in the library)."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from batchpool import defaults, paths
from batchpool.errors import BatchpoolError, LocatedError

if TYPE_CHECKING:  # imported where used: `batchpool run` starts its agent before them
    from rich.console import Console

    from batchpool.config import PoolConfig
    from batchpool.spec import JobSpec
    from batchpool.store import Store

F = TypeVar("F", bound=Callable[..., Any])

#: Exit statuses: 0 all good, 1 a job failed or was cancelled, 2 bad input.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print machine-readable JSON instead of tables.")
config_option = click.option(
    # No envvar= here: config.find_config reads $BATCHPOOL_CONFIG itself, so that its
    # errors can say that the variable (not --config) names a missing file.
    "--config", "config_file", type=click.Path(dir_okay=False),
    help="batchpool.toml to use (default: $BATCHPOOL_CONFIG, ./batchpool.toml, "
         "then the user config dir).")


retry_backoff_option = click.option(
    "--retry-backoff", type=float, default=defaults.RETRY_BACKOFF, show_default=True,
    envvar="BATCHPOOL_RETRY_BACKOFF", metavar="SECONDS",
    help="Wait before the first retry of a failed task; doubles per retry (max "
         f"{defaults.RETRY_BACKOFF_MAX:.0f}s).")


def handle_errors(command: F) -> F:
    """Turn batchpool's errors into one clear line on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LocatedError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except BatchpoolError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper  # type: ignore[return-value]


def open_store() -> Store:
    from batchpool.store import Store

    return Store(paths.store_path())


def console() -> Console:
    from rich.console import Console

    return Console()


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a block of imports: they make many objects
    and no garbage, and the collections they trigger cost `batchpool run` ~10 ms."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def exit_quickly(status: int) -> NoReturn:
    """Exit with `status`, sparing the interpreter a last collection over everything
    imported (~30 ms here): those objects are freed with the process anyway."""
    gc.freeze()
    sys.exit(status)


def wait_and_report(store: Store, job_id: int, timeout: float | None, as_json: bool) -> int:
    """Wait for a job to end, print its state (or report); the exit status to use."""
    from batchpool.reports import job_report

    job = store.wait(job_id, timeout)
    if not job.terminal:
        click.echo(f"job {job_id} still {job.state} after {timeout}s", err=True)
        return EXIT_FAILED
    report = job_report(store, job_id)
    if as_json:
        emit_json(report)
    else:
        click.echo(f"job {job_id}: {report['state']}"
                   + (f" ({report['reason']})" if report["reason"] else ""))
    return 0 if report["state"] == "succeeded" else EXIT_FAILED


def checked_job(spec: str, pool: str | None, config_file: str | None,
                ) -> tuple[JobSpec, PoolConfig]:
    """The spec at `spec` and the pool it is to run on, both checked (ConfigError or
    SpecError, exit status 2, if either cannot work): what `submit` and `schedule add`
    record."""
    from batchpool.config import load_config
    from batchpool.pool.providers import check_pool
    from batchpool.spec import load_spec

    config = load_config(config_file)
    job_spec = load_spec(spec)
    pool_config = config.pool(pool or job_spec.pool)
    check_pool(pool_config)
    return job_spec, pool_config


def tell_service(store: Store, job_id: int) -> bool:
    """Wake the store's controller service for the job just queued; whether one runs
    (if not, a note on stderr says the job waits)."""
    from batchpool.service_lock import wake_service

    served = wake_service(store)
    if not served:
        click.echo("note: no controller service is running on this store; the job waits "
                   "until `batchpool controller run` starts (or `batchpool job resume "
                   f"{job_id}` runs it in the foreground)", err=True)
    return served
