"""`batchpool.Executor` for real: calls cloudpickled to warm workers, local and over SSH."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, as_completed, wait
from pathlib import Path

import cloudpickle
import pytest
from helpers import Batchpool, dev_pool_config
from test_ssh_pool import _no_leftovers  # noqa: F401

import batchpool
from batchpool.devcluster import DevCluster
from batchpool.executor import chunk_runner

# The nodes cannot import this test module: its functions travel by value, as a
# user's own module's would after the same call (see docs/executor.md).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square(x: int) -> int:
    return x * x


def where() -> tuple[str, int]:
    return os.environ["BATCHPOOL_NODE"], os.getpid()


def fail(x: int) -> None:
    raise KeyError(f"no key {x}")


def die() -> None:
    os._exit(7)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.fixture
def local(bp: Batchpool, monkeypatch: pytest.MonkeyPatch) -> Batchpool:
    monkeypatch.chdir(bp.cwd)  # no ./batchpool.toml: the local pool
    return bp


def test_submit_map_and_futures_on_the_local_pool(local: Batchpool) -> None:
    with batchpool.Executor() as ex:
        futures = [ex.submit(square, i) for i in range(20)]
        assert sorted(f.result(timeout=60) for f in as_completed(futures)) == \
            [i * i for i in range(20)]
        assert list(ex.map(square, range(7))) == [i * i for i in range(7)]
        assert list(ex.map(square, range(103), chunksize=10)) == [i * i for i in range(103)]
        offset = 5
        assert ex.submit(lambda y: y + offset, 1).result() == 6  # a closure, by value
        node, pid = ex.submit(where).result()
        assert node == "local" and pid != os.getpid()
        job = ex.job_id
    report = local.json("job", "show", str(job))
    assert report["state"] == "succeeded" and report["succeeded"] == 20 + 7 + 11 + 2


def test_map_cuts_many_calls_into_a_few_tasks_per_slot(local: Batchpool) -> None:
    with batchpool.Executor() as ex:
        assert list(ex.map(square, range(1000))) == [i * i for i in range(1000)]
        assert list(ex.map(square, [])) == []
        slots = ex._slots()
    total = local.json("job", "show", str(ex.job_id))["total"]
    assert total <= 4 * slots, f"{total} tasks for 1000 calls on {slots} slots"


def test_remote_exception_is_raised_with_the_remote_traceback(local: Batchpool) -> None:
    with batchpool.Executor() as ex:
        future = ex.submit(fail, 3)
        with pytest.raises(KeyError, match="no key 3") as caught:
            future.result(timeout=60)
        cause = caught.value.__cause__
        assert isinstance(cause, batchpool.executor.RemoteTraceback)
        assert "Traceback" in cause.text and "in fail" in cause.text
        assert ex.submit(square, 3).result(timeout=60) == 9  # the worker lives on
        dead = ex.submit(die)
        with pytest.raises(batchpool.RemoteCallError, match="worker died"):
            dead.result(timeout=60)
        assert ex.submit(square, 4).result(timeout=60) == 16  # a fresh worker
        job = ex.job_id
    assert local.json("job", "show", str(job))["failed"] == 2


def test_shutdown_waits_and_refuses_new_calls(local: Batchpool) -> None:
    ex = batchpool.Executor()
    futures = [ex.submit(nap, 0.2) for _ in range(4)]
    ex.shutdown(wait=True)
    assert all(f.done() and f.result() == 0.2 for f in futures)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    assert local.json("job", "show", str(ex.job_id))["state"] == "succeeded"


def test_cancelled_future_never_runs(local: Batchpool) -> None:
    with batchpool.Executor() as ex:
        cores = os.cpu_count() or 1
        blockers = [ex.submit(nap, 1.0) for _ in range(4 * cores)]  # fill slots and queue
        last = ex.submit(square, 2)
        assert last.cancel()
        done, _ = wait(blockers, timeout=60, return_when=FIRST_COMPLETED)
        assert done
    assert last.cancelled()
    report = local.json("job", "show", str(ex.job_id))
    assert report["state"] == "succeeded" and report["cancelled"] == 1, report


EXITS_WITHOUT_SHUTDOWN = """
import time, batchpool
def nap(s):
    time.sleep(s)
    return s
ex = batchpool.Executor()
futures = [ex.submit(nap, 0.3) for _ in range(3)]
print(ex.job_id)
"""  # and the program ends: no shutdown, no with-block


def test_an_open_executor_finishes_its_calls_at_exit(local: Batchpool) -> None:
    result = subprocess.run([sys.executable, "-c", EXITS_WITHOUT_SHUTDOWN], cwd=local.cwd,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = local.json("job", "show", result.stdout.strip())
    assert report["state"] == "succeeded" and report["succeeded"] == 3, report


def test_shutdown_cancelling_thousands_of_queued_calls_returns(local: Batchpool) -> None:
    ex = batchpool.Executor()
    futures = [ex.submit(nap, 0.05) for _ in range(3000)]
    started = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - started < 60
    assert all(f.done() for f in futures)
    assert sum(f.cancelled() for f in futures) > 2000
    assert local.json("job", "show", str(ex.job_id))["state"] == "succeeded"


def test_an_executor_session_cannot_be_resumed(local: Batchpool) -> None:
    with batchpool.Executor() as ex:
        ex.submit(square, 2).result(timeout=60)
    result = local("job", "resume", str(ex.job_id))
    assert result.returncode == 2 and "Executor session" in result.stderr, result.stderr


def test_map_chunks_need_no_batchpool_on_the_node(tmp_path: Path) -> None:
    """The chunk runner travels by value: a node without batchpool can run it."""
    payload = tmp_path / "chunk.pickle"
    payload.write_bytes(cloudpickle.dumps((chunk_runner(square), ([(3,), (4,)],), {})))
    probe = ("import sys, pickle; sys.modules['batchpool'] = None; "
             f"fn, args, kwargs = pickle.loads(open({str(payload)!r}, 'rb').read()); "
             "print(fn(*args, **kwargs))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[9, 16]"


@pytest.mark.ssh
def test_executor_spreads_calls_over_ssh_nodes(bp: Batchpool, tmp_path: Path,
                                               dev_cluster: DevCluster) -> None:
    config = dev_pool_config(dev_cluster, tmp_path)
    with batchpool.Executor(pool="dev", config=config) as ex:
        # calls long enough that every node is up before they are all done
        placed = list(ex.map(lambda _: (nap(0.2), where())[1], range(60)))
        assert sum(ex.map(square, range(1000), chunksize=50)) == sum(i * i for i in range(1000))
        with pytest.raises(KeyError):
            ex.submit(fail, 1).result(timeout=60)
    nodes = {node for node, _ in placed}
    assert nodes <= {n.address for n in dev_cluster.status()} and len(nodes) > 1
    assert len(set(placed)) < 60, "calls must reuse warm workers"
