"""How other processes find the controller service of a store, and wake it.

Two things, both tied to the store's path: an exclusive lock on a file beside the store
(one service per store), and a wake-up channel, a Unix datagram socket in Linux's
abstract namespace, to which `batchpool submit` sends a byte so that the service looks
for the new job at once instead of at its next poll. The kernel drops both when the
service dies, however it dies: a crashed service never blocks the next one, and a
datagram to a dead service fails instead of reaching some other process. Stdlib only:
`batchpool submit` uses it and should not import the controller.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from batchpool.errors import BatchpoolError

if TYPE_CHECKING:
    from batchpool.store import Store


class ServiceLock:
    """At most one service per store: an exclusive `flock` on a file beside it."""

    def __init__(self, store: Store) -> None:
        self.store_path = store.path
        self.path = Path(f"{store.path}.controller.lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock and write this pid in it; BatchpoolError naming the holder's pid
        if another service has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        for attempt in range(5):  # `held_elsewhere` probes hold a shared lock an instant
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
            self._file.truncate(0)   # no stale pid is left behind
            self._file.close()       # closing drops the lock
            self._file = None

    def held_elsewhere(self) -> bool:
        """Whether a running service holds the lock. The probe takes a shared lock for an
        instant, so that probes never see each other as a service."""
        if not self.path.exists():
            return False
        with self.path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


def wake_address(store: Store) -> str:
    """The service's wake-up socket: abstract (no file, no path-length limit), named by
    a digest of the store's path."""
    digest = hashlib.sha256(str(store.path).encode()).hexdigest()[:32]
    return f"\0batchpool-controller-{digest}"


def open_wake_channel(store: Store) -> socket.socket | None:
    """The service's end of the channel, non-blocking; None where it cannot be opened
    (no abstract namespace outside Linux): the service then finds jobs by polling."""
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        channel.bind(wake_address(store))
    except OSError:
        channel.close()
        return None
    channel.setblocking(False)
    return channel


def drain(channel: socket.socket) -> None:
    """Read every wake-up waiting on `channel` (many submits count as one)."""
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while True:
            channel.recv(64)


def wake_service(store: Store) -> bool:
    """Tell the store's service to look for jobs now; whether a service runs. Where no
    service listens (none runs, or it polls: no abstract namespace), the lock says."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        try:
            sender.sendto(b"w", wake_address(store))
        except BlockingIOError:  # its queue is full of wake-ups already
            return True
        except OSError:          # nobody bound to it
            return ServiceLock(store).held_elsewhere()
    return True
