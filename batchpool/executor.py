"""`batchpool.Executor`: `concurrent.futures.Executor` over a pool's warm workers.

An Executor session is a job in the store (so `batchpool job show` follows it) with one
open task group, ``calls``: each `submit` adds a member, whose function, arguments and
result travel cloudpickled over the node agent to a warm worker interpreter on the
node (no process per call). The controller runs on a thread of the Executor's own,
with its own event loop; `submit` hands calls over to it thread-safely.

Functions defined in ``__main__`` (or in a module registered with
``cloudpickle.register_pickle_by_value``) travel by value; other functions are found
by module name on the node, so their module must be importable there. Nodes need
``cloudpickle`` for functions sent by value.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures.thread  # noqa: F401 (its exit hook must be registered before ours)
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor as _Executor
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle

from batchpool import paths
from batchpool.config import load_config
from batchpool.controller import Controller, owner_id
from batchpool.errors import BatchpoolError
from batchpool.pool.providers import check_pool
from batchpool.scheduler import Outcome
from batchpool.spec import JobSpec
from batchpool.spec.model import EXECUTOR_CALL
from batchpool.store import Store

T = TypeVar("T")

GROUP = "calls"
MAX_CALLS = 10_000_000  # the open group's array bound (the most members a spec may have)


class RemoteCallError(BatchpoolError):
    """A call that did not return: its worker died, its node was lost, it was cancelled."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a node, as its text (the `__cause__`)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\nthe call failed on the node:\n{self.text}"


class Executor(_Executor):
    """Run Python calls on a pool's nodes: ``with batchpool.Executor(pool="lab") as ex:``."""

    def __init__(self, pool: str | None = None, config: str | Path | None = None,
                 name: str = "executor") -> None:
        settings = load_config(config)
        self._pool = settings.pool(pool)
        check_pool(self._pool)  # a pool that cannot work is refused before a job exists
        self._store = Store(paths.store_path())
        spec = JobSpec.model_validate({
            "name": name, "base_dir": str(Path.cwd()),
            "tasks": [{"id": GROUP, "call": EXECUTOR_CALL, "max_attempts": 1,
                       "array": f"0-{MAX_CALLS - 1}"}]})
        self._controller = Controller(self._store, self._pool)
        self.job_id = self._store.submit(spec, self._pool.name, state="running",
                                         owner=self._controller.owner or owner_id())
        self._lock = threading.Lock()
        self._futures: dict[int, Future[Any]] = {}
        self._payloads: dict[int, str] = {}
        self._count = 0
        self._growing = False  # a _grow is on its way to the loop: see submit
        self._shutdown = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._controller.attach_calls(self.job_id, GROUP, self)
        self._thread = threading.Thread(target=self._serve, name=f"batchpool-executor-"
                                        f"{self.job_id}", daemon=True)
        self._thread.start()
        self._ready.wait()
        # Like ThreadPoolExecutor: an Executor left open finishes its calls before the
        # program exits. threading's exit hooks run before the thread pools (which the
        # controller uses) are shut down; atexit's would run after.
        threading._register_atexit(self._at_exit)  # type: ignore[attr-defined]

    # -- the controller's thread -----------------------------------------------------------
    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to every caller still waiting
            self._error = exc
            reason = f"the controller stopped: {exc}"
            self.ended("failed", reason)
            self._store.finish_owned(self.job_id, self._controller.owner, "failed", reason)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._controller.run([self.job_id])

    def submitted(self) -> int:
        with self._lock:
            return self._count

    def closed(self) -> bool:
        with self._lock:
            return self._shutdown

    def payload(self, position: int) -> str:
        with self._lock:
            return self._payloads[position]

    def dispatch(self, position: int) -> bool:
        with self._lock:
            future = self._futures.get(position)
        if future is None or not future.set_running_or_notify_cancel():
            with self._lock:
                self._futures.pop(position, None)
                self._payloads.pop(position, None)
            return False
        return True

    def settled(self, position: int, state: str, outcome: Outcome,
                reply: dict[str, Any] | None) -> None:
        with self._lock:
            future = self._futures.pop(position, None)
            self._payloads.pop(position, None)
        if future is None or future.done():
            return
        if not future.running():  # still queued when its job was cancelled
            future.set_running_or_notify_cancel()
        packed = (reply or {}).get("pickle")
        if state == "succeeded" and isinstance(packed, str):
            future.set_result(cloudpickle.loads(base64.b64decode(packed)))
            return
        error: BaseException = RemoteCallError(f"the call {state}: {outcome.describe()}")
        text = (reply or {}).get("traceback")
        if isinstance(packed, str) and isinstance(text, str):  # the function raised this
            raised = cloudpickle.loads(base64.b64decode(packed))
            if isinstance(raised, BaseException):
                error = raised
        if isinstance(text, str):
            error.__cause__ = RemoteTraceback(text)
        future.set_exception(error)

    def ended(self, state: str, reason: str | None) -> None:
        with self._lock:
            left = list(self._futures.values())
            self._futures.clear()
            self._payloads.clear()
            self._shutdown = True
        for future in left:
            if future.set_running_or_notify_cancel():
                future.set_exception(RemoteCallError(
                    f"the Executor's job {self.job_id} {state}: {reason}"))

    # -- the caller's side ------------------------------------------------------------------
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on the pool; its Future."""
        payload = base64.b64encode(cloudpickle.dumps((fn, args, kwargs))).decode()
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to an Executor after shutdown")
            if self._error is not None:
                raise RuntimeError(f"the Executor stopped: {self._error}")
            position = self._count
            self._count += 1
            self._futures[position] = future
            self._payloads[position] = payload
            wake, self._growing = not self._growing, True
        if wake:  # one wake-up of the loop for a burst of submits, not one each
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._grow)
        return future

    def _grow(self) -> None:
        with self._lock:
            self._growing = False
            size = self._count
        run = self._controller.jobs.get(self.job_id)
        if run is not None and size > run.progress.total:  # else the job's start takes it
            self._controller.grow_calls(self.job_id, size)

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None) -> Iterator[T]:
        """Like the builtin map, run on the pool; `chunksize` calls travel as one task.

        By default (None) the calls are cut into about four chunks per slot of the pool,
        as `multiprocessing.Pool.map` does: one task per call would cost far more than a
        small call. Pass ``chunksize=1`` for one task per call.
        """
        arguments = list(zip(*iterables, strict=False))
        if chunksize is None:
            chunksize = max(1, -(-len(arguments) // (4 * self._slots())))
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if chunksize == 1:
            return super().map(fn, *zip(*arguments, strict=True), timeout=timeout)
        chunks = super().map(chunk_runner(fn), _batches(arguments, chunksize), timeout=timeout)
        return itertools.chain.from_iterable(chunks)

    def _slots(self) -> int:
        """The pool's slots: those of its nodes that are up, else a guess from its config."""
        up = sum(node.slots for node in list(self._controller.nodes.values()) if node.ready)
        if up:
            return up
        per_node = self._pool.slots_per_node
        nodes = max(1, len(self._pool.hosts))
        return nodes * (per_node if isinstance(per_node, int) else os.cpu_count() or 1)

    def _at_exit(self) -> None:
        if self._thread.is_alive():
            self.shutdown(wait=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls; with `wait`, return once every call has finished."""
        with self._lock:
            already = self._shutdown
            self._shutdown = True
            pending = list(self._futures.values()) if cancel_futures else []
        for future in pending:
            future.cancel()
        if not already and self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._controller.seal_calls, self.job_id)
        if wait:
            self._thread.join()


def chunk_runner(fn: Callable[..., T]) -> Callable[[list[tuple[Any, ...]]], list[T]]:
    """One task for many calls of `fn`: what `map(chunksize=n)` sends."""

    def run_chunk(arguments: list[tuple[Any, ...]]) -> list[T]:
        # nested, so cloudpickle sends it by value: nodes need no batchpool installed
        return [fn(*args) for args in arguments]

    return run_chunk


def _batches(items: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
