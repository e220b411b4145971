"""A background thread that applies store writes in batched transactions.

The controller's event loop must never block on disk; it hands statements to this
writer, which commits whatever has accumulated in one transaction. A crash loses at
most the last unflushed batch, which at-least-once execution tolerates: the affected
tasks are simply run again on resume.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from batchpool import defaults

log = logging.getLogger(__name__)

Statement = tuple[str, Sequence[Any]]
_STOP = object()


class StoreWriter:
    """Queue of SQL statements, committed in batches by one thread."""

    def __init__(self, connect: Callable[[], sqlite3.Connection],
                 interval: float = defaults.STORE_FLUSH_INTERVAL) -> None:
        self._connect = connect
        self._interval = interval
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue one statement; it is committed within about `interval` seconds."""
        if self._error is not None:
            raise self._error
        self._queue.put((sql, params))

    def flush(self) -> None:
        """Block until everything queued so far is committed."""
        done = threading.Event()
        self._queue.put(done)
        done.wait()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Commit what is queued and stop the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        db = self._connect()
        try:
            stopping = False
            while not stopping:
                batch = [self._queue.get()]
                if isinstance(batch[0], tuple):
                    time.sleep(self._interval)  # let a batch accumulate
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stopping = self._apply(db, batch)
        finally:
            db.close()

    def _apply(self, db: sqlite3.Connection, batch: list[object]) -> bool:
        """Run one batch in a transaction; returns True when asked to stop."""
        waiters = [item for item in batch if isinstance(item, threading.Event)]
        statements = [item for item in batch if isinstance(item, tuple)]
        try:
            if statements:
                with db:
                    for sql, params in statements:
                        db.execute(sql, params)
        except BaseException as exc:  # reported to the next caller, never swallowed
            log.exception("store write failed")
            self._error = exc
        for waiter in waiters:
            waiter.set()
        return any(item is _STOP for item in batch)
