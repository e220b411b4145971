"""One controller service per store: an exclusive lock on a file beside it.

Kept apart from the service (stdlib only) because `batchpool submit` uses it too, to
tell whether a service runs and to wake it, and should not import the controller.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from batchpool.errors import BatchpoolError

if TYPE_CHECKING:
    from batchpool.store import Store


class ServiceLock:
    """At most one service per store: an exclusive lock on a file beside it.

    The kernel drops the lock when the process dies, however it dies, so a crashed
    service never blocks the next one. `batchpool submit` tests it to warn that no
    service is running.
    """

    def __init__(self, store: Store) -> None:
        self.store_path = store.path
        self.path = Path(f"{store.path}.controller.lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock; BatchpoolError naming the holder's pid if another has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        for attempt in range(5):  # `held_elsewhere` probes hold it for an instant
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 4:
                    time.sleep(0.05)
        else:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise BatchpoolError(f"a controller service (pid {holder}) already runs on the "
                                 f"store {self.store_path}") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()   # closing drops the lock
            self._file = None

    def held_elsewhere(self) -> bool:
        """Whether a running service holds the lock (a probe that takes it for an instant)."""
        if not self.path.exists():
            return False
        with self.path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def poke(self) -> bool:
        """Wake the service holding the lock (SIGUSR1), so that it looks for jobs now;
        False if no service holds it. A service that cannot be signalled (another user's)
        still finds the job at its next poll."""
        if not self.held_elsewhere():
            return False
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.path.read_text().strip()), signal.SIGUSR1)
        return True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()
