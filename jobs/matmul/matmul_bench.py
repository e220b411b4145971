"""Node benchmark: numpy matrix-multiply GFLOP/s, then a per-node table of every node.

bench:  python3 matmul_bench.py --sizes 256,512,1024,2048 --repeats 5 --out gflops.json
reduce: python3 matmul_bench.py --reduce DIR     (reads every gflops.json under DIR)

An n x n by n x n product costs 2 n^3 floating-point operations; the bench times the
best of at least `repeats` products per size (more for small sizes, until they fill
--min-seconds; after one warm-up, so that BLAS thread start-up and page faults are not
measured) and reports 2 n^3 / seconds. Best-of-N rather than the mean because other work
on the node can only slow a run down, never speed it up. Each
product is also checked against a matrix-vector identity, so a broken BLAS fails loudly
instead of reporting a fast wrong answer. The BLAS uses its default thread count (every
core) unless OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS say otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def blas_info() -> str:
    """A short name for numpy's BLAS, e.g. 'scipy-openblas 0.3.27' (best effort)."""
    try:
        config = np.show_config(mode="dicts")  # numpy >= 1.26
        blas = config["Build Dependencies"]["blas"]
        version = ".".join(str(blas.get("version", "")).split(".")[:3])
        return f"{blas.get('name', '?')} {version}".strip()
    except Exception:  # older numpy prints instead of returning; the bench must still run
        return "unknown"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not just the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def bench(n: int, repeats: int, dtype: str = "float64", seed: int = 0,
          min_seconds: float = 0.2) -> dict[str, Any]:
    """Best GFLOP/s of an n x n matrix product, with a correctness check.

    At least `repeats` products, and more while they add up to under `min_seconds`:
    a small product takes well under a millisecond, and one best-of-5 that short is at
    the mercy of a single interruption.
    """
    if n < 1 or repeats < 1:
        raise ValueError("need n >= 1 and repeats >= 1")
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = a @ b  # warm-up
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 10_000):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    v = rng.standard_normal(n).astype(dtype)
    expected = a @ (b @ v)
    error = float(np.linalg.norm(c @ v - expected) / (np.linalg.norm(expected) or 1.0))
    tolerance = 1e-3 if np.dtype(dtype).itemsize <= 4 else 1e-9
    if not error <= tolerance:
        raise ArithmeticError(f"n = {n}: C v differs from A (B v) by {error:.1e}: broken BLAS?")
    best = min(times)
    flops = 2.0 * n**3
    return {"n": n, "dtype": dtype, "repeats": len(times), "best_seconds": best,
            "median_seconds": float(np.median(times)),
            "gflops": flops / best / 1e9 if best > 0 else float("inf"),
            "relative_error": error}


def run(sizes: list[int], repeats: int, dtype: str, min_seconds: float = 0.2) -> dict[str, Any]:
    """Benchmark every size on this node and describe the node."""
    results = [bench(n, repeats, dtype, min_seconds=min_seconds) for n in sizes]
    return {
        "node": os.environ.get("BATCHPOOL_NODE") or socket.gethostname(),
        "hostname": socket.gethostname(),
        "cores": os.cpu_count(), "usable_cores": usable_cores(),
        "machine": platform.machine(), "python": platform.python_version(),
        "numpy": np.__version__, "blas": blas_info(),
        "threads": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "results": results,
        "best_gflops": max(r["gflops"] for r in results),
    }


def node_table(reports: list[dict[str, Any]]) -> str:
    """One row per node: cores, BLAS, GFLOP/s for each size, and the best."""
    sizes = sorted({r["n"] for rep in reports for r in rep["results"]})
    header = (f"{'node':<16} {'hostname':<16} {'cores':>5}  {'BLAS':<24}"
              + "".join(f"{'n=' + str(n):>9}" for n in sizes) + f"{'best':>9}")
    lines = ["numpy matmul GFLOP/s (best of N)", header, "-" * len(header)]
    for rep in sorted(reports, key=lambda r: r["node"]):
        by_size = {r["n"]: r["gflops"] for r in rep["results"]}
        cells = "".join(f"{by_size[n]:9.1f}" if n in by_size else f"{'-':>9}" for n in sizes)
        lines.append(f"{rep['node'][:16]:<16} {rep['hostname'][:16]:<16} "
                     f"{rep['usable_cores']:>5}  {rep['blas'][:24]:<24}{cells}"
                     f"{rep['best_gflops']:9.1f}")
    total = sum(rep["best_gflops"] for rep in reports)
    lines.append(f"{len(reports)} node(s), {total:.1f} GFLOP/s in all (sum of each node's best)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512,1024,2048",
                        help="comma-separated matrix sizes n")
    parser.add_argument("--repeats", type=int, default=5,
                        help="best of at least this many products")
    parser.add_argument("--min-seconds", type=float, default=0.2,
                        help="keep repeating a size until its products take this long")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--out", type=Path, default=None,
                        help="gflops.json for the bench, nodes.json for the reduce")
    parser.add_argument("--reduce", type=Path, metavar="DIR",
                        help="tabulate every gflops.json found under DIR")
    args = parser.parse_args(argv)
    if args.reduce is not None:
        files = sorted(args.reduce.rglob("gflops.json"))
        if not files:
            print(f"no gflops.json under {args.reduce}", file=sys.stderr)
            return 2
        reports = [json.loads(f.read_text()) for f in files]
        print(node_table(reports))
        (args.out or Path("nodes.json")).write_text(json.dumps(reports, indent=2) + "\n")
        return 0
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error("--sizes: give at least one size >= 1")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    report = run(sizes, args.repeats, args.dtype, args.min_seconds)
    (args.out or Path("gflops.json")).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['node']} ({report['hostname']}): {report['usable_cores']} of "
          f"{report['cores']} cores usable, numpy {report['numpy']}, BLAS {report['blas']}"
          + (f", {report['threads']}" if report["threads"] else ""))
    for r in report["results"]:
        print(f"  n = {r['n']:>5} {r['dtype']}: {r['gflops']:8.2f} GFLOP/s "
              f"(best {r['best_seconds'] * 1e3:.2f} ms of {r['repeats']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
