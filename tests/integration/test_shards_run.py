"""`shards` end to end: each task gets only its own file or row block, on any node."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import Batchpool, dev_pool_config, write
from test_ssh_pool import _check, _no_leftovers, _run  # noqa: F401

from batchpool.devcluster import DevCluster

ROWS = '''
import numpy as np
def block(path):
    a = np.load(path)
    return {"rows": a.shape[0], "first": float(a[0, 0]), "sum": float(a.sum())}
'''


def _job(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    for i in range(5):
        write(tmp_path / "data" / f"part{i}.csv", "".join(f"{i},{j}\n" for j in range(i + 1)))
    np.save(tmp_path / "big.npy", np.arange(103 * 3, dtype=float).reshape(103, 3))
    write(tmp_path / "rows.py", ROWS)
    return write(tmp_path / "job.toml", """
name = "shards"
files = ["rows.py"]
[defaults]
max_attempts = 1
[[tasks]]
id = "lines"
command = "ls > seen.txt; wc -l < {shard_path} > n.txt; echo {shard_path} >> n.txt"
shards = { glob = "data/*.csv" }
outputs = ["n.txt", "seen.txt"]
[[tasks]]
id = "blocks"
call = "rows:block"
args = ["{shard_path}"]
shards = { npy = "big.npy", count = 4 }
[[tasks]]
id = "total"
command = "cat $BATCHPOOL_INPUTS_DIR/blocks*/result.json"
depends_on = ["blocks", "lines"]
""")


def _check_results(bp: Batchpool) -> None:
    work = bp.home / "work" / "1"
    for i in range(5):
        n_txt = next((work / f"lines@{i}").glob("*/n.txt")).read_text().split()
        assert n_txt == [str(i + 1), f"part{i}.csv"]
        seen = next((work / f"lines@{i}").glob("*/seen.txt")).read_text().split()
        assert [s for s in seen if s.endswith(".csv")] == [f"part{i}.csv"], "only its shard"
    blocks = [json.loads(line) for line in
              bp("job", "logs", "1", "total").stdout.splitlines() if line.startswith("{")]
    assert sorted(b["rows"] for b in blocks) == [25, 26, 26, 26]
    assert sorted(b["first"] for b in blocks) == [0.0, 78.0, 156.0, 234.0]
    assert sum(b["sum"] for b in blocks) == float(np.arange(309).sum())


def test_shards_on_the_local_pool(bp: Batchpool, tmp_path: Path) -> None:
    result = bp("run", str(_job(tmp_path)), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    _check_results(bp)


@pytest.mark.ssh
def test_shards_are_staged_to_ssh_nodes(bp: Batchpool, tmp_path: Path,
                                        dev_cluster: DevCluster) -> None:
    _check(_run(bp, _job(tmp_path), dev_pool_config(dev_cluster, tmp_path)))
    _check_results(bp)
