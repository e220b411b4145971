"""Running jobs in the foreground: the controller, a live display, and Ctrl-C handling."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from batchpool.config import PoolConfig
from batchpool.controller import Controller, owner_id
from batchpool.errors import BatchpoolError
from batchpool.progress import JobProgress
from batchpool.scheduler import RetryPolicy
from batchpool.store import Store

if TYPE_CHECKING:
    from batchpool.display import LiveDisplay

log = logging.getLogger(__name__)

#: The live display starts this long after the run (the controller starts first): on a
#: terminal nobody sees the difference, and the job's first tasks do not wait for rich.
DISPLAY_AFTER = 0.2

DisplayFactory = Callable[[JobProgress], "LiveDisplay | None"]


async def run_jobs(store: Store, pool: PoolConfig, job_ids: list[int],
                   display: DisplayFactory | None = None,
                   retry_policy: RetryPolicy | None = None) -> dict[int, JobProgress]:
    """Run claimed jobs to their end, showing progress; Ctrl-C cancels, twice aborts.

    If the controller fails before it has set up any node, the jobs are marked failed
    with the reason: nothing ran, and left `running` they would look alive forever.
    """
    controller: Controller | None = None
    try:
        controller = Controller(store, pool, retry_policy=retry_policy)
        return await _run(controller, job_ids, display)
    except Exception as exc:
        if controller is None or not controller.nodes:
            reason = f"could not start: {_describe(exc)}"
            owner = controller.owner if controller is not None else owner_id()
            for job_id in job_ids:
                try:
                    await asyncio.to_thread(store.finish_owned, job_id, owner, "failed", reason)
                except Exception:  # the original error matters more
                    log.exception("could not mark job %s failed", job_id)
        raise


async def _run(controller: Controller, job_ids: list[int],
               display: DisplayFactory | None) -> dict[int, JobProgress]:
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
    started = False

    def start_displays() -> None:
        nonlocal started
        started = True
        for progress in (r.progress for r in controller.jobs.values()):
            shown = display(progress) if display is not None else None
            if shown is not None:
                shown.start()
                displays.append(shown)

    try:
        await asyncio.wait([run], timeout=DISPLAY_AFTER)
        while not run.done():
            if not started and controller.jobs:
                start_displays()
            for shown in displays:
                shown.refresh()
            await asyncio.wait([run], timeout=0.2)
        return run.result()
    finally:
        if not run.done():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if not started and not run.cancelled() and run.exception() is None:
            start_displays()  # a run shorter than DISPLAY_AFTER: its last state is shown
        for shown in displays:
            shown.stop()


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, BatchpoolError) else f"{type(exc).__name__}: {exc}"
