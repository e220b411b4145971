"""Python `call` tasks in warm workers and `on_every_node` broadcasts, end to end.

Run for real through `batchpool run` on the local pool and on the session's dev
cluster of real sshd nodes.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
from helpers import Batchpool, dev_pool_config, write
from test_ssh_pool import _check, _closed_port, _no_leftovers, _run  # noqa: F401

from batchpool.devcluster import DevCluster

ROOT = Path(__file__).resolve().parents[2]

PROBE = '''
import os
CALLS = 0

def probe(index):
    global CALLS
    CALLS += 1
    return {"index": index, "pid": os.getpid(), "calls": CALLS,
            "node": os.environ["BATCHPOOL_NODE"]}

def fail(index):
    raise ValueError(f"bad input {index}")
'''


def _results(bp: Batchpool, job: int = 1) -> dict[str, object]:
    """task id -> JSON result of its succeeded attempt, read from the store file."""
    with sqlite3.connect(bp.home / "batchpool.db") as db:
        rows = db.execute("SELECT task_id, result FROM attempts WHERE job_id=? AND"
                          " state='succeeded' AND result IS NOT NULL", (job,)).fetchall()
    return {task_id: json.loads(text) for task_id, text in rows}


def _calls_spec(tmp_path: Path, tasks: int, target: str = "probe:probe") -> Path:
    write(tmp_path / "probe.py", PROBE)
    return write(tmp_path / "calls.toml", f"""
name = "calls"
files = ["probe.py"]
[defaults]
max_attempts = 1
[[tasks]]
id = "p"
call = "{target}"
args = ["{{index}}"]
array = "0-{tasks - 1}"
[[tasks]]
id = "gather"
command = "cat $BATCHPOOL_INPUTS_DIR/*/result.json | wc -l"
depends_on = ["p"]
""")


def test_call_form_of_montecarlo_pi_on_the_local_pool(bp: Batchpool) -> None:
    result = bp("run", str(ROOT / "jobs/montecarlo-pi/call.toml"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    results = _results(bp)
    counts = {task: r for task, r in results.items() if task.startswith("count")}
    assert len(counts) == 64 and all(r["samples"] == 2_000_000 for r in counts.values())
    assert results["reduce"]["samples"] == 64 * 2_000_000
    pi = json.loads(next((bp.home / "work/1/reduce").glob("*/pi.json")).read_text())
    assert abs(pi["pi"] - math.pi) < 5 * pi["stderr"]


@pytest.mark.ssh
def test_calls_reuse_warm_workers_on_ssh_nodes(bp: Batchpool, tmp_path: Path,
                                               dev_cluster: DevCluster) -> None:
    spec = _calls_spec(tmp_path, 24)
    _check(_run(bp, spec, dev_pool_config(dev_cluster, tmp_path)))
    results = _results(bp)
    assert sorted(r["index"] for r in results.values()) == list(range(24))
    workers = {(r["node"], r["pid"]) for r in results.values()}
    assert len(workers) < 24 and max(r["calls"] for r in results.values()) > 1, \
        "calls must share warm worker processes, not start one each"
    logs = bp("job", "logs", "1", "gather").stdout
    assert "24" in logs  # the reduce saw every result.json, staged from every node


@pytest.mark.ssh
def test_failing_call_fails_its_task_with_the_exception(bp: Batchpool, tmp_path: Path,
                                                        dev_cluster: DevCluster) -> None:
    spec = _calls_spec(tmp_path, 2, target="probe:fail")
    _check(_run(bp, spec, dev_pool_config(dev_cluster, tmp_path)), status=1)
    report = bp.json("job", "show", "1")
    assert report["groups"]["p"]["failed"] == 2
    assert report["groups"]["gather"]["failed"] == 1
    logs = bp("job", "logs", "1", "p[0]").stdout
    assert "ValueError: bad input 0" in logs and "Traceback" in logs


def _broadcast_spec(tmp_path: Path) -> Path:
    return write(tmp_path / "bcast.toml", """
name = "bcast"
[[tasks]]
id = "probe"
command = "echo {node} {index} > where.txt"
on_every_node = true
outputs = ["where.txt"]
[[tasks]]
id = "table"
command = "cat $BATCHPOOL_INPUTS_DIR/*/where.txt | sort"
depends_on = ["probe"]
""")


def test_on_every_node_naming_a_stranger_fails_it_instead_of_waiting(
        bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "b.toml", """
name = "b"
[[tasks]]
id = "probe"
command = "echo {node}"
on_every_node = ["local", "nowhere:22"]
""")
    result = bp("run", str(spec), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {r["node"]: r for r in bp.json("job", "show", "1")["per_node"]["probe"]}
    assert rows["local"]["state"] == "succeeded"
    assert rows["nowhere:22"]["state"] == "failed"
    assert "not a node of pool 'local'" in rows["nowhere:22"]["reason"]


@pytest.mark.ssh
def test_on_every_node_runs_once_on_each_node(bp: Batchpool, tmp_path: Path,
                                              dev_cluster: DevCluster) -> None:
    _check(_run(bp, _broadcast_spec(tmp_path), dev_pool_config(dev_cluster, tmp_path)))
    names = sorted(n.address for n in dev_cluster.status())
    table = bp("job", "logs", "1", "table").stdout
    reported = sorted(line.split()[0] for line in table.splitlines() if line.startswith("127."))
    assert reported == names
    rows = bp.json("job", "show", "1")["per_node"]["probe"]
    assert sorted(r["node"] for r in rows) == names
    assert all(r["state"] == "succeeded" for r in rows)
    shown = bp("job", "show", "1").stdout
    assert "one task per node" in shown and all(name in shown for name in names)


@pytest.mark.ssh
def test_on_every_node_member_of_an_unreachable_node_fails(bp: Batchpool, tmp_path: Path,
                                                           dev_cluster: DevCluster) -> None:
    dead = f"127.0.0.1:{_closed_port()}"
    hosts = [n.address for n in dev_cluster.status()] + [dead]
    config = dev_pool_config(dev_cluster, tmp_path, hosts=hosts)
    _check(_run(bp, _broadcast_spec(tmp_path), config), status=1)
    report = bp.json("job", "show", "1")
    assert report["groups"]["probe"] == {"queued": 0, "running": 0, "succeeded": 3,
                                         "failed": 1, "cancelled": 0}
    assert report["groups"]["table"]["failed"] == 1
    with sqlite3.connect(bp.home / "batchpool.db") as db:
        reason = db.execute("SELECT reason FROM tasks WHERE job_id=1 AND task_id='probe[3]'"
                            ).fetchone()[0]
    assert dead in reason and "gone" in reason, reason
    rows = {r["node"]: r for r in report["per_node"]["probe"]}
    assert rows[dead]["state"] == "failed" and "gone" in rows[dead]["reason"]
    assert all(r["state"] == "succeeded" for n, r in rows.items() if n != dead)
