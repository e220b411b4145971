"""`batchpool controller run`: the long-running service for submitted jobs."""

from __future__ import annotations

import click

from batchpool import defaults
from batchpool.cli.common import config_option, handle_errors, open_store, retry_backoff_option


@click.group()
def controller() -> None:
    """The controller service, which runs the jobs queued with `batchpool submit`."""


@controller.command("run")
@config_option
@click.option("--poll", type=click.FloatRange(min=0.05), default=defaults.SERVICE_POLL,
              show_default=True, metavar="SECONDS",
              help="How often to look in the store for newly submitted jobs.")
@retry_backoff_option
@handle_errors
def run_service(config_file: str | None, poll: float, retry_backoff: float) -> None:
    """Run the controller service in the foreground until Ctrl-C or SIGTERM.

    It runs every job queued with `batchpool submit` on its pool, highest priority
    first, and adopts jobs whose controller died (a killed `batchpool run` or service):
    their finished tasks are not run again. A pool's nodes come up with its first job
    and stay up for its `idle_timeout` after its last. One service per $BATCHPOOL_HOME;
    the configuration is read once, at start. On Ctrl-C or SIGTERM the nodes are shut
    down and unfinished jobs stay `running`, for the next service to adopt.
    """
    import asyncio
    import signal
    import time

    from batchpool.config import load_config
    from batchpool.scheduler import RetryPolicy
    from batchpool.service import Service
    from batchpool.service_lock import ServiceLock

    config = load_config(config_file)
    store = open_store()

    def announce(line: str) -> None:
        click.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", err=True)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        service = Service(store, config, poll=poll, announce=announce,
                          retry_policy=RetryPolicy(base=retry_backoff))
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, service.poke)  # from `batchpool submit`
        announce(f"controller service (pid {service.owner}) on {store.path}; pools: "
                 f"{config.known()}")
        await service.run(stop)
        announce("controller service stopped")

    # until the loop handles it, a SIGUSR1 from `batchpool submit` must not end the service
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    with ServiceLock(store).held():
        asyncio.run(serve())
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
