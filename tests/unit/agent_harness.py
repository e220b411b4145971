"""A real node agent for tests: started exactly as the controller starts it."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchpool.agent.launch import decode, encode


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, e.g. under a non-reaping init, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def read_pid(path: Path, timeout: float = 5.0) -> int:
    assert wait_until(lambda: path.exists() and path.read_text().strip() != "", timeout), path
    return int(path.read_text().strip())


class AgentProc:
    """A running agent, its message stream, and what the test must clean up."""

    def __init__(self, argv: list[str], workdir: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.pids: list[int] = []  # task processes to kill at teardown, whatever happens
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=cwd, env=env)
        self.agent_pid: int | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(decode(line))
        self.queue.put(None)

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, msg: dict[str, Any]) -> None:
        self.write(encode(msg))

    def run(self, key: str, cmd: str, directory: str | None = None, **fields: Any) -> None:
        msg: dict[str, Any] = {"op": "run", "key": key, "cmd": cmd,
                               "dir": directory or f"tasks/{key}",
                               "env": {}, "timeout": None, "links": [], "outputs": []}
        msg.update(fields)
        self.send(msg)

    def expect(self, op: str, key: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The first message with this op (and key) not yet expected, waiting for it.

        Messages are matched in arrival order; ones that do not match stay pending for
        later calls, and all are recorded in `seen`.
        """
        for i, old in enumerate(self.pending):
            if old["op"] == op and (key is None or old.get("key") == key):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                msg = self.queue.get(timeout=max(left, 0.0))
            except queue.Empty:
                raise AssertionError(f"no {op!r} message for key {key!r} within {timeout}s; "
                                     f"seen: {self.seen[-5:]}") from None
            if msg is None:
                raise AssertionError(f"agent stream ended while waiting for {op!r}; "
                                     f"seen: {self.seen[-5:]}")
            self.seen.append(msg)
            if msg["op"] == op and (key is None or msg.get("key") == key):
                return msg
            if msg["op"] != "hb":  # heartbeats are only of interest when awaited
                self.pending.append(msg)

    def task_dir(self, key: str) -> Path:
        return self.workdir / "tasks" / key

    def close_input(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def cleanup(self) -> None:
        self.close_input()
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            if self.agent_pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(self.agent_pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=3)
        for pid in self.pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


StartAgent = Callable[..., AgentProc]
