"""`batchpool controller run`: the long-running service for submitted jobs."""

from __future__ import annotations

import contextlib

import click

from batchpool import defaults
from batchpool.cli.common import config_option, handle_errors, open_store, retry_backoff_option


@click.group()
def controller() -> None:
    """The controller service: runs submitted jobs and fires the schedules."""


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
    their finished tasks are not run again. It fires the schedules (`batchpool
    schedule`) within --poll seconds of their time. A pool's nodes come up with its
    first job and stay up for its `idle_timeout` after its last. One service per $BATCHPOOL_HOME;
    the configuration is read once, at start. On Ctrl-C or SIGTERM the nodes are shut
    down and unfinished jobs stay `running`, for the next service to adopt; a second
    Ctrl-C stops without waiting for the nodes.
    """
    import asyncio
    import signal
    import time

    from batchpool.config import load_config
    from batchpool.scheduler import RetryPolicy
    from batchpool.service import Service
    from batchpool.service_lock import ServiceLock, drain, open_wake_channel

    config = load_config(config_file)
    store = open_store()

    def announce(line: str) -> None:
        click.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", err=True)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        service = Service(store, config, poll=poll, announce=announce,
                          retry_policy=RetryPolicy(base=retry_backoff))

        def stop_requested() -> None:
            if stop.is_set() and main is not None:  # the second Ctrl-C: do not wait
                main.cancel()
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop_requested)
        channel = open_wake_channel(store)   # `batchpool submit` wakes the service here
        if channel is not None:
            def woken() -> None:
                drain(channel)
                service.poke()

            loop.add_reader(channel.fileno(), woken)
        announce(f"controller service (pid {service.owner}) on {store.path}; pools: "
                 f"{config.known()}" + ("" if channel else f"; polling every {poll:g}s"))
        try:
            await service.run(stop)
        finally:
            if channel is not None:
                loop.remove_reader(channel.fileno())
                channel.close()
        announce("controller service stopped")

    with ServiceLock(store).held(), contextlib.suppress(asyncio.CancelledError):
        asyncio.run(serve())
