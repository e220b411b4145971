"""Helpers shared by the benchmarks: temporary state dirs, timing, result lines."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from batchpool.config import local_pool
from batchpool.devcluster import DevCluster
from batchpool.progress import JobProgress
from batchpool.runner import run_jobs
from batchpool.spec import parse_spec_text
from batchpool.store import Store


@contextmanager
def private_home() -> Iterator[Path]:
    """A throw-away $BATCHPOOL_HOME for one benchmark."""
    with tempfile.TemporaryDirectory(prefix="batchpool-bench-") as tmp:
        old = os.environ.get("BATCHPOOL_HOME")
        os.environ["BATCHPOOL_HOME"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("BATCHPOOL_HOME", None)
            else:
                os.environ["BATCHPOOL_HOME"] = old


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def dev_cluster(n: int, prefix: str, keep: bool = False,
                after_down: Callable[[Path], None] | None = None,
                ) -> Iterator[tuple[DevCluster, Path]]:
    """A fresh n-node dev cluster in a private /tmp/PREFIX* dir: stopped however the
    benchmark ends (SIGTERM included), then `after_down(dir)` (to kill what outlived the
    nodes), then the dir removed unless `keep`."""
    old = signal.signal(signal.SIGTERM, _terminate)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    cluster = DevCluster(tmp / "cluster")
    try:
        cluster.up(n)
        yield cluster, tmp
    finally:
        try:
            try:
                cluster.down()
            finally:
                if after_down is not None:
                    after_down(tmp)
        finally:
            signal.signal(signal.SIGTERM, old)
            if keep:
                print(f"# kept {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)


def self_cpu() -> float:
    """CPU seconds of this process (all its threads, not its children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_local(spec_text: str, home: Path) -> tuple[JobProgress, float, float]:
    """Run a TOML spec on the local pool in this process: (progress, wall s, self CPU s)."""
    spec = parse_spec_text(spec_text, "bench.toml", "toml", home)
    store = Store(home / "batchpool.db")
    job_id = store.submit(spec, "local", state="running")
    cpu, wall = self_cpu(), time.perf_counter()
    results = asyncio.run(run_jobs(store, local_pool(), [job_id]))
    return results[job_id], time.perf_counter() - wall, self_cpu() - cpu


def report(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"{name:<44} {value:>12.3f} {unit:<10} {note}")
