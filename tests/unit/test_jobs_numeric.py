"""The numeric example jobs, run for real: NPB EP, Monte Carlo pi, the sweep, matmul.

The programs under jobs/ are what users run first, so a silent numeric regression there
(a generator off by one step, a shard counted twice) must fail a test, not a demo.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from batchpool.spec import load_spec

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def load_job_module(relative: str) -> ModuleType:
    """Import a job's program by path under a unique name (pi.py is not a package)."""
    name = "job_" + re.sub(r"\W", "_", relative.removesuffix(".py"))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, JOBS / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


ep = load_job_module("npb-ep/ep.py")
pi = load_job_module("montecarlo-pi/pi.py")
ridge = load_job_module("sweep/ridge.py")
matmul = load_job_module("matmul/matmul_bench.py")

CLASS_S = ep.CLASSES["S"]
SUM_KEYS = ("sx", "sy", "sum_abs_x", "sum_abs_y", "q", "gaussian_pairs")


def steps(x: int, count: int) -> int:
    """`count` single steps of the generator, the slow way."""
    for _ in range(count):
        x = ep.step(x)
    return x


# ------------------------------------------------------------------ NPB EP generator
def test_generator_is_the_npb_lcg() -> None:
    assert ep.A == 1_220_703_125 and ep.SEED == 271_828_183 and ep.MASK == 2**46 - 1
    assert ep.step(ep.SEED) == ep.A * ep.SEED % 2**46


@pytest.mark.parametrize("k", [0, 1, 2, 3, 1000, 2**17 + 5])
def test_jump_ahead_equals_stepping(k: int) -> None:
    assert ep.jump(ep.SEED, k) == steps(ep.SEED, k)
    assert ep.power(ep.A, k) == pow(ep.A, k, 2**46)


def test_batch_seed_is_2_to_17_steps_per_batch() -> None:
    x = ep.SEED
    for batch in range(4):
        assert ep.batch_seed(batch) == x
        x = steps(x, 2 * ep.NK)
    assert ep.power(ep.A, 2**40 + 12345) == pow(ep.A, 2**40 + 12345, 2**46)


def test_vectorised_batch_equals_stepping_every_value() -> None:
    """uint64 products of 46-bit numbers wrap modulo 2^64; masked, they must stay exact."""
    batch = 5
    first, second = ep.batch_states(batch)
    x = ep.batch_seed(batch)
    expected = []
    for _ in range(2 * ep.NK):
        x = ep.step(x)
        expected.append(x)
    assert [int(v) for v in first] == expected[0::2]
    assert [int(v) for v in second] == expected[1::2]
    u1, u2 = ep.batch_uniforms(batch)
    assert u1[0] == 2.0 * (expected[0] * 2.0**-46) - 1.0  # bit-exact, as NPB computes it
    assert u2[-1] == 2.0 * (expected[-1] * 2.0**-46) - 1.0
    assert float(u1.min()) > -1.0 and float(u2.max()) < 1.0


def test_exact_sums_do_not_round() -> None:
    values = [1e16, 1.0, -1e16, 2.0**-1074, 0.1, -0.0]
    total = sum(ep.to_exact(v) for v in values)
    assert ep.from_exact(total) == 1.1
    assert sum(values) == 0.1  # adding the floats in order loses the 1.0
    assert ep.from_exact(ep.to_exact(-3.25)) == -3.25


def test_shard_ranges_cover_every_batch_once() -> None:
    for shards in (1, 3, 7, 16, 300):
        ranges = [ep.shard_batches(256, k, shards) for k in range(shards)]
        assert ranges[0][0] == 0 and ranges[-1][1] == 256
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    with pytest.raises(ValueError):
        ep.shard_batches(256, 3, 3)


# ------------------------------------------------------------------ NPB EP class S
@pytest.fixture(scope="module")
def class_s_one_shard() -> dict[str, Any]:
    return ep.combine([ep.run_shard(CLASS_S, 0, 1)])


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class S as 3 shards through the command line, laid out like $BATCHPOOL_INPUTS_DIR."""
    inputs = tmp_path_factory.mktemp("inputs")
    for k in range(3):
        task = inputs / f"shard[{k}]"
        task.mkdir()
        argv = ["--class", "S", "--shard", str(k), "--shards", "3", "--out",
                str(task / "ep.json")]
        assert ep.main(argv) == 0
    return inputs


def test_class_s_verifies_with_npb_reference(class_s_one_shard: dict[str, Any]) -> None:
    result = class_s_one_shard
    text, verified = ep.report(result)
    assert verified, text
    # the counts NPB 3.3 prints for class S, and its published sums to 1e-8
    assert result["q"] == [6140517, 5865300, 1100361, 68546, 1648, 17, 0, 0, 0, 0]
    assert result["gaussian_pairs"] == 13_176_389
    assert abs(result["sx"] / -3.247834652034740e3 - 1) <= 1e-8
    assert abs(result["sy"] / -6.958407078382297e3 - 1) <= 1e-8
    assert "Verification    = SUCCESSFUL" in text


def test_3_and_7_shards_are_bit_identical_to_1(class_s_one_shard: dict[str, Any],
                                               shard_dir: Path) -> None:
    three = ep.combine([json.loads(p.read_text()) for p in shard_dir.rglob("ep.json")])
    seven = ep.combine([ep.run_shard(CLASS_S, k, 7) for k in range(7)])
    for key in SUM_KEYS:
        assert three[key] == class_s_one_shard[key], key
        assert seven[key] == class_s_one_shard[key], key
    assert (three["shards"], seven["shards"]) == (3, 7)


def test_reduce_command_verifies(shard_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ep-result.json"
    assert ep.main(["--reduce", str(shard_dir), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Class           = S" in text and "3 shard(s)" in text
    assert "Verification    = SUCCESSFUL" in text and "Mop/s total" in text
    saved = json.loads(out.read_text())
    assert saved["verified"] is True and saved["gaussian_pairs"] == 13_176_389


def copy_inputs(shard_dir: Path, tmp_path: Path) -> Path:
    inputs = tmp_path / "inputs"
    shutil.copytree(shard_dir, inputs)
    return inputs


def test_wrong_sums_fail_verification(shard_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    inputs = copy_inputs(shard_dir, tmp_path)
    path = inputs / "shard[1]" / "ep.json"
    part = json.loads(path.read_text())
    wrong = part["sx"] * (1 + 1e-6)  # consistent but wrong: a kernel bug, not a corrupt file
    part["sx"], part["sx_exact"] = wrong, hex(ep.to_exact(wrong))
    path.write_text(json.dumps(part))
    assert ep.main(["--reduce", str(inputs), "--out", str(tmp_path / "r.json")]) == 1
    text = capsys.readouterr().out
    assert "Verification    = FAILED" in text and "MISMATCH" in text


def test_wrong_seed_fails_verification(capsys: pytest.CaptureFixture[str]) -> None:
    assert ep.main(["--class", "S", "--seed", "314159265"]) == 1
    assert "Verification    = FAILED" in capsys.readouterr().out


def test_reduce_refuses_incomplete_or_doubled_shards(shard_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    inputs = copy_inputs(shard_dir, tmp_path)
    out = str(tmp_path / "r.json")
    shutil.rmtree(inputs / "shard[1]")
    assert ep.main(["--reduce", str(inputs), "--out", out]) == 2
    assert "missing" in capsys.readouterr().err
    shutil.copytree(inputs / "shard[0]", inputs / "again")
    shutil.copytree(shard_dir / "shard[1]", inputs / "shard[1]")
    assert ep.main(["--reduce", str(inputs), "--out", out]) == 2
    assert "computed twice" in capsys.readouterr().err
    shutil.rmtree(inputs / "again")
    path = inputs / "shard[2]" / "ep.json"
    part = json.loads(path.read_text())
    part["sy"] += 1.0  # edited by hand: no longer matches its exact sum
    path.write_text(json.dumps(part))
    assert ep.main(["--reduce", str(inputs), "--out", out]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert ep.main(["--reduce", str(tmp_path / "empty"), "--out", out]) == 2


# ------------------------------------------------------------------ Monte Carlo pi
def test_pi_count_is_the_cli_map(tmp_path: Path) -> None:
    part = tmp_path / "part.json"
    assert pi.main(["--seed", "3", "--samples", "50000", "--out", str(part)]) == 0
    assert json.loads(part.read_text()) == pi.count(3, 50000)
    result = pi.count(seed=3, samples=50000)  # as a call task passes it: keyword arguments
    assert result["seed"] == 3 and result["samples"] == 50000
    assert 0.7 < result["hits"] / result["samples"] < 0.87
    with pytest.raises(ValueError):
        pi.count(1, -1)


@pytest.mark.parametrize("forms", [("part.json",), ("result.json",),
                                   ("part.json", "result.json")])
def test_pi_reduce_reads_both_input_forms(forms: tuple[str, ...], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "inputs"
    for seed in range(8):
        name = forms[seed % len(forms)]
        task = inputs / (f"map[{seed}]" if name == "part.json" else f"count[{seed}]")
        task.mkdir(parents=True)
        (task / name).write_text(json.dumps(pi.count(seed, 20000)))
    monkeypatch.chdir(tmp_path)
    assert pi.main(["--reduce", str(inputs)]) == 0
    assert "160,000 samples in 8 shards" in capsys.readouterr().out
    assert json.loads((tmp_path / "pi.json").read_text())["shards"] == 8


def test_pi_reduce_call_reads_the_inputs_dir_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = tmp_path / "inputs"
    for seed in range(4):
        (inputs / f"count[{seed}]").mkdir(parents=True)
        (inputs / f"count[{seed}]" / "result.json").write_text(json.dumps(pi.count(seed, 20000)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATCHPOOL_INPUTS_DIR", str(inputs))
    result = pi.reduce()
    assert result["shards"] == 4 and result["samples"] == 80000
    assert json.loads((tmp_path / "pi.json").read_text()) == result
    with pytest.raises(FileNotFoundError):
        pi.reduce(str(tmp_path / "empty"))


def test_pi_reduce_counts_a_task_once_and_rejects_bad_parts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    task = tmp_path / "inputs" / "map[0]"
    task.mkdir(parents=True)
    (task / "part.json").write_text(json.dumps(pi.count(0, 10000)))
    (task / "result.json").write_text(json.dumps(pi.count(0, 10000)))
    monkeypatch.chdir(tmp_path)
    assert pi.main(["--reduce", str(tmp_path / "inputs")]) == 0
    assert "in 1 shards" in capsys.readouterr().out
    (task / "part.json").write_text(json.dumps({"hits": 5}))
    assert pi.main(["--reduce", str(tmp_path / "inputs")]) == 1
    assert "integer 'hits' and 'samples'" in capsys.readouterr().err
    assert pi.main(["--reduce", str(tmp_path / "nothing")]) == 1


# ------------------------------------------------------------------ sweep
def test_sweep_points_and_reduce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "inputs"
    grid = [(alpha, n) for alpha in (0.01, 0.3, 3.0) for n in (50, 1000)]
    for position, (alpha, n) in enumerate(grid):
        task = inputs / f"fit[{position}]"
        task.mkdir(parents=True)
        argv = ["--alpha", str(alpha), "--n", str(n), "--repeats", "4",
                "--out", str(task / "result.json")]
        assert ridge.main(argv) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert ridge.main(["--reduce", str(inputs)]) == 0
    text = capsys.readouterr().out
    summary = json.loads((tmp_path / "sweep.json").read_text())
    results = summary["grid"]
    best = min(results, key=lambda r: r["test_mse"])
    assert summary["best"] == best and summary["missing"] == 0 and len(results) == 6
    assert f"best point: alpha = {best['alpha']:g}, n = {best['n']}" in text
    assert sum(line.count("*") for line in text.splitlines()[2:]) == 2  # one per n
    # more data never hurts at a fixed alpha, and every error is above the noise floor
    by_point = {(r["alpha"], r["n"]): r["test_mse"] for r in results}
    assert all(by_point[(a, 1000)] < by_point[(a, 50)] for a in (0.01, 0.3, 3.0))
    assert all(r["test_mse"] > ridge.NOISE**2 for r in results)
    # with little data strong regularisation wins; with more, a weaker one
    assert summary["best_alpha_per_n"]["50"] > summary["best_alpha_per_n"]["1000"]
    assert ridge.main(["--reduce", str(tmp_path / "none")]) == 2


def test_sweep_same_training_sets_for_every_alpha() -> None:
    """Common random numbers: at alpha = 0 vs tiny alpha the fits nearly coincide."""
    a = ridge.evaluate(0.0, 200, repeats=2)
    b = ridge.evaluate(1e-9, 200, repeats=2)
    assert abs(a["test_mse"] - b["test_mse"]) < 1e-6


# ------------------------------------------------------------------ matmul
def test_matmul_bench_tiny_and_node_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BATCHPOOL_NODE", "node-a")
    out = tmp_path / "inputs" / "gflops[a]" / "gflops.json"
    out.parent.mkdir(parents=True)
    argv = ["--sizes", "16,64", "--repeats", "3", "--min-seconds", "0", "--out", str(out)]
    assert matmul.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["node"] == "node-a" and report["cores"] >= 1 and report["blas"]
    assert [r["n"] for r in report["results"]] == [16, 64]
    assert all(r["gflops"] > 0 and r["repeats"] >= 3 for r in report["results"])
    assert report["best_gflops"] == max(r["gflops"] for r in report["results"])
    other = dict(report, node="node-b", best_gflops=1.5)
    (tmp_path / "inputs" / "gflops[b]").mkdir()
    (tmp_path / "inputs" / "gflops[b]" / "gflops.json").write_text(json.dumps(other))
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert matmul.main(["--reduce", str(tmp_path / "inputs")]) == 0
    text = capsys.readouterr().out
    assert "node-a" in text and "node-b" in text and "2 node(s)" in text
    assert len(json.loads((tmp_path / "nodes.json").read_text())) == 2
    with pytest.raises(ValueError):
        matmul.bench(0, 1)


# ------------------------------------------------------------------ the specs themselves
@pytest.mark.parametrize("spec", ["npb-ep/job.toml", "npb-ep/job-s.toml", "npb-ep/job-a.toml"])
def test_npb_specs_shard_the_whole_array(spec: str) -> None:
    job = load_spec(JOBS / spec)
    shard, verify = job.tasks
    shards = int(re.search(r"--shards (\d+)", shard.command).group(1))
    assert shard.size == shards and shard.member(shards - 1).index == shards - 1
    assert verify.depends_on == ("shard",) and "--reduce" in verify.command


def test_other_specs_load() -> None:
    sweep = load_spec(JOBS / "sweep/job.toml")
    assert sweep.tasks[0].size == 24 and sweep.tasks[1].depends_on == ("fit",)
    bench = load_spec(JOBS / "matmul/job.toml")
    assert bench.tasks[0].on_every_node and bench.tasks[1].depends_on == ("gflops",)
    call = load_spec(JOBS / "montecarlo-pi/call.toml")
    count = call.tasks[0]
    assert count.call == "pi:count" and count.size == 64
    assert dict(count.kwargs) == {"seed": "{index}", "samples": 2000000}
    assert call.tasks[1].depends_on == ("count",)


def test_ep_call_form_shards_and_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = tmp_path / "inputs"
    for index in range(2):  # what the verify task finds: each shard's return value
        (inputs / f"shard[{index}]").mkdir(parents=True)
        (inputs / f"shard[{index}]" / "result.json").write_text(
            json.dumps(ep.shard("S", index, 2)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATCHPOOL_INPUTS_DIR", str(inputs))
    summary = ep.verify()
    assert summary == {"class": "S", "m": 24, "gaussian_pairs": 13176389, "verified": True}
    assert json.loads((tmp_path / "ep-result.json").read_text())["verified"] is True
    part = json.loads((inputs / "shard[1]" / "result.json").read_text())
    part["sx_exact"] = hex(int(part["sx_exact"], 16) + (1 << 1060))  # a wrong sum
    part["sx"] += 2.0 ** -14
    (inputs / "shard[1]" / "result.json").write_text(json.dumps(part))
    with pytest.raises(ArithmeticError, match="failed verification"):
        ep.verify()


def test_ep_call_spec_is_the_command_spec_as_calls() -> None:
    command, call = load_spec(JOBS / "npb-ep/job-a.toml"), load_spec(JOBS / "npb-ep/call-a.toml")
    assert [g.size for g in call.tasks] == [g.size for g in command.tasks] == [32, 1]
    shard, verify = call.tasks
    assert shard.call == "ep:shard" and list(shard.args) == ["A", "{index}", 32]
    assert verify.call == "ep:verify" and verify.depends_on == ("shard",)
