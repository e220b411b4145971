"""A background thread that applies store writes in batched transactions.

The controller's event loop must never block on disk; it hands statements to this
writer, which commits whatever has accumulated in one transaction. A crash loses at
most the last unflushed batch, which at-least-once execution tolerates: the affected
tasks are simply run again on resume.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

from batchpool import defaults

log = logging.getLogger(__name__)

Statement = tuple[str, Sequence[Any], int]

#: Phases of a batch. Statements of FIRST (inserts of new rows nothing else in the batch
#: reads) and LAST (rows no other statement touches) may be moved within the batch, so
#: each phase runs as few `executemany` calls as possible; ORDERED statements keep their
#: order, consecutive identical ones being grouped.
FIRST, ORDERED, LAST = 0, 1, 2


class StoreWriter:
    """Statements queued from any thread, committed in batches by one thread.

    A deque and an Event rather than queue.Queue: appending is the hot path (three
    statements per task) and must cost next to nothing on the event loop.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection],
                 interval: float = defaults.STORE_FLUSH_INTERVAL) -> None:
        self._connect = connect
        self._interval = interval
        self._pending: collections.deque[Statement | threading.Event] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def execute(self, sql: str, params: Sequence[Any] = (), phase: int = ORDERED) -> None:
        """Queue one statement; it is committed within about `interval` seconds."""
        if self._error is not None:
            raise self._error
        self._pending.append((sql, params, phase))

    def flush(self) -> None:
        """Block until everything queued so far is committed."""
        done = threading.Event()
        self._pending.append(done)
        self._wake.set()
        done.wait()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Commit what is queued and stop the thread."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        db = self._connect()
        try:
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                stopping = self._stopping
                self._apply(db)
                if stopping:
                    self._apply(db)
                    return
        finally:
            db.close()

    def _apply(self, db: sqlite3.Connection) -> None:
        """Commit every statement queued so far in one transaction, then release waiters."""
        batch: list[Statement] = []
        waiters: list[threading.Event] = []
        pending = self._pending
        while pending:
            item = pending.popleft()
            if isinstance(item, threading.Event):
                waiters.append(item)
            else:
                batch.append(item)
        try:
            if batch:
                with db:
                    for phase in (FIRST, ORDERED, LAST):
                        _execute_grouped(db, [(sql, p) for sql, p, ph in batch if ph == phase],
                                         reorder=phase != ORDERED)
        except BaseException as exc:  # reported to the next caller, never swallowed
            log.exception("store write failed")
            self._error = exc
        for waiter in waiters:
            waiter.set()


def _execute_grouped(db: sqlite3.Connection, statements: list[tuple[str, Sequence[Any]]],
                     reorder: bool) -> None:
    """Run statements with one executemany per run of identical SQL (per SQL if reorder)."""
    if reorder:
        groups: dict[str, list[Sequence[Any]]] = {}
        for sql, params in statements:
            groups.setdefault(sql, []).append(params)
        for sql, rows in groups.items():
            db.executemany(sql, rows)
        return
    start = 0
    while start < len(statements):
        sql = statements[start][0]
        end = start + 1
        while end < len(statements) and statements[end][0] == sql:
            end += 1
        db.executemany(sql, [params for _, params in statements[start:end]])
        start = end
