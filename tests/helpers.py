"""Running the real `batchpool` command in tests, each test with its own state dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchpool.devcluster import DevCluster, to_toml


@dataclass
class Batchpool:
    """The CLI, as a user runs it, with BATCHPOOL_HOME set to a private directory."""

    home: Path
    cwd: Path

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPOOL_")}
        env["BATCHPOOL_HOME"] = str(self.home)
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "batchpool", *args]

    def __call__(self, *args: str, timeout: float = 120,
                 check: bool | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*args), env=self.env, cwd=self.cwd,
                                capture_output=True, text=True, timeout=timeout)
        if check is not None and (result.returncode == 0) != check:
            raise AssertionError(
                f"batchpool {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def json(self, *args: str, timeout: float = 120) -> Any:
        result = self(*args, "--json", timeout=timeout)
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"not JSON (exit {result.returncode}):\n{result.stdout}\n"
                                 f"{result.stderr}") from None

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*args), env=self.env, cwd=self.cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def wait_for(condition: Callable[[], object], timeout: float = 30,
             what: str = "condition") -> None:
    """Poll `condition` until it is true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not met within {timeout:g}s")


def stop(process: subprocess.Popen[str]) -> None:
    """SIGKILL a spawned CLI's process group if it still runs, and close its pipes."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    for stream in (process.stdout, process.stderr):
        if stream:
            stream.close()


@contextmanager
def service(bp: Batchpool, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A running `batchpool controller run`, killed with its group at the end."""
    process = bp.spawn("controller", "run", "--poll", "0.2", "--retry-backoff", "0.1", *args)
    lock = bp.home / "batchpool.db.controller.lock"
    try:
        wait_for(lambda: (lock.exists() and lock.read_text().strip() == str(process.pid))
                 or process.poll() is not None, what="the service to start")
        assert process.poll() is None, process.communicate()
        yield process
    finally:
        stop(process)


def terminate(process: subprocess.Popen[str]) -> str:
    """SIGTERM the service, wait for it to exit 0; returns what it printed."""
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return err


def dev_pool_config(cluster: DevCluster, tmp_path: Path, **settings: object) -> Path:
    """A batchpool.toml whose pool "dev" is the cluster's nodes, working under tmp_path."""
    table = {**cluster.pool_config(), "workdir": str(tmp_path / "nodes" / "{node}"),
             **settings}
    return write(tmp_path / "batchpool.toml", to_toml({"default_pool": "dev"},
                                                      {"pools.dev": table}))
