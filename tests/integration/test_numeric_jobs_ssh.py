"""The numeric example jobs and multi-stage map/reduce, on real sshd nodes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from helpers import Batchpool, dev_pool_config, write
from test_ssh_pool import _check, _no_leftovers, _run  # noqa: F401

from batchpool.devcluster import DevCluster
from batchpool.store import Store

pytestmark = pytest.mark.ssh

ROOT = Path(__file__).resolve().parents[2]


def test_npb_ep_class_s_verifies_across_nodes(bp: Batchpool, tmp_path: Path,
                                              dev_cluster: DevCluster) -> None:
    _check(_run(bp, ROOT / "jobs/npb-ep/job-s.toml", dev_pool_config(dev_cluster, tmp_path)))
    logs = bp("job", "logs", "1", "verify").stdout
    assert re.search(r"Verification\s+=\s+SUCCESSFUL", logs), logs
    ran_on = {a.node for a in Store(bp.home / "batchpool.db").attempts(1)
              if a.task_id.startswith("shard") and a.state == "succeeded"}
    assert len(ran_on) > 1, f"the shards all ran on {ran_on}"


def test_npb_ep_call_form_verifies_across_nodes(bp: Batchpool, tmp_path: Path,
                                               dev_cluster: DevCluster) -> None:
    shutil.copy(ROOT / "jobs/npb-ep/ep.py", tmp_path)
    # A class S shard takes milliseconds: one node can run all four before the others have
    # joined. A wrapper that makes each take 0.5 s, one slot per node, spreads them.
    write(tmp_path / "slow_ep.py", "import time\nfrom ep import *  # noqa\n\n"
          "def shard(*args):\n    time.sleep(0.5)\n    import ep\n    return ep.shard(*args)\n")
    text = (ROOT / "jobs/npb-ep/call-a.toml").read_text()  # class S in 4 shards, else as is
    spec = write(tmp_path / "call-s.toml", text.replace('"A", "{index}", 32', '"S", "{index}", 4')
                 .replace('array = "0-31"', 'array = "0-3"')
                 .replace('call = "ep:shard"', 'call = "slow_ep:shard"')
                 .replace('files = ["ep.py"]', 'files = ["ep.py", "slow_ep.py"]'))
    assert "slow_ep:shard" in spec.read_text() and "slow_ep.py" in spec.read_text()
    _check(_run(bp, spec, dev_pool_config(dev_cluster, tmp_path, slots_per_node=1)))
    logs = bp("job", "logs", "1", "verify").stdout
    assert re.search(r"Verification\s+=\s+SUCCESSFUL", logs), logs
    results = {a.task_id: a for a in Store(bp.home / "batchpool.db").attempts(1)
               if a.state == "succeeded"}
    assert len({results[f"shard[{i}]"].node for i in range(4)}) > 1
    assert '"verified": true' in results["verify"].result


def test_matmul_runs_once_per_node_and_tabulates_them(bp: Batchpool, tmp_path: Path,
                                                      dev_cluster: DevCluster) -> None:
    shutil.copy(ROOT / "jobs/matmul/matmul_bench.py", tmp_path)
    spec = write(tmp_path / "matmul.toml", """
name = "matmul-small"
files = ["matmul_bench.py"]
[[tasks]]
id = "gflops"
command = "python3 matmul_bench.py --sizes 32,64 --repeats 2 --min-seconds 0 --out gflops.json"
on_every_node = true
outputs = ["gflops.json"]
[[tasks]]
id = "table"
command = "python3 matmul_bench.py --reduce \\"$BATCHPOOL_INPUTS_DIR\\" --out nodes.json"
depends_on = ["gflops"]
""")
    _check(_run(bp, spec, dev_pool_config(dev_cluster, tmp_path)))
    table = bp("job", "logs", "1", "table").stdout
    for node in dev_cluster.status():
        assert sum(line.startswith(node.address) for line in table.splitlines()) == 1, table


def _pipeline(tmp_path: Path, fail_map: int | None) -> Path:
    failing = f"[ {{index}} -ne {fail_map} ] || exit 3; " if fail_map is not None else ""
    return write(tmp_path / "pipeline.toml", f"""
name = "pipeline"
[defaults]
max_attempts = 2
[[tasks]]
id = "map"
command = "{failing}echo $(( {{index}} * {{index}} )) > sq.txt"
array = "0-8"
outputs = ["sq.txt"]
[[tasks]]
id = "combine"
command = "cat $BATCHPOOL_INPUTS_DIR/map*/sq.txt | awk '{{{{s+=$1}}}} END {{{{print s}}}}' >p.txt"
array = "0-2"
depends_on = ["map"]
outputs = ["p.txt"]
[[tasks]]
id = "reduce"
command = "cat $BATCHPOOL_INPUTS_DIR/combine*/p.txt"
depends_on = ["combine"]
""")


def test_map_combine_reduce_across_nodes(bp: Batchpool, tmp_path: Path,
                                         dev_cluster: DevCluster) -> None:
    _check(_run(bp, _pipeline(tmp_path, None), dev_pool_config(dev_cluster, tmp_path)))
    out = bp("job", "logs", "1", "reduce").stdout.split()
    assert out.count(str(sum(i * i for i in range(9)))) == 3, out


def test_failed_map_fails_later_stages_as_dependency_failed(bp: Batchpool, tmp_path: Path,
                                                            dev_cluster: DevCluster) -> None:
    result = _run(bp, _pipeline(tmp_path, 4), dev_pool_config(dev_cluster, tmp_path), timeout=120)
    _check(result, status=1)
    report = bp.json("job", "show", "1")
    assert report["groups"]["map"]["failed"] == 1 and report["groups"]["map"]["succeeded"] == 8
    settled = {s["group"]: s for s in report["settled_groups"]}
    assert settled["combine"]["reason"] == settled["reduce"]["reason"] == "dependency failed"
