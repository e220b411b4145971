"""Running jobs in the foreground: the controller, a live display, and Ctrl-C handling."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from batchpool.config import PoolConfig
from batchpool.controller import Controller
from batchpool.display import LiveDisplay
from batchpool.progress import JobProgress
from batchpool.scheduler import RetryPolicy
from batchpool.store import Store

DisplayFactory = Callable[[JobProgress], LiveDisplay | None]


async def run_jobs(store: Store, pool: PoolConfig, job_ids: list[int],
                   display: DisplayFactory | None = None,
                   retry_policy: RetryPolicy | None = None) -> dict[int, JobProgress]:
    """Run claimed jobs to their end, showing progress; Ctrl-C cancels, twice aborts."""
    controller = Controller(store, pool, retry_policy=retry_policy)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    interrupts = 0

    def interrupted() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            for job_id in job_ids:
                controller.cancel(job_id, "interrupted")
        elif main is not None:
            main.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted)
    run = asyncio.create_task(controller.run(job_ids))
    displays: list[LiveDisplay] = []
    try:
        while not controller.jobs and not run.done():
            await asyncio.sleep(0.01)
        if display is not None:
            for progress in (r.progress for r in controller.jobs.values()):
                shown = display(progress)
                if shown is not None:
                    shown.start()
                    displays.append(shown)
        while not run.done():
            await asyncio.wait([run], timeout=0.2)
            for shown in displays:
                shown.refresh()
        return run.result()
    finally:
        if not run.done():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        for shown in displays:
            shown.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
