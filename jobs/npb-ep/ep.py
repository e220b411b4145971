"""NAS Parallel Benchmarks EP (Embarrassingly Parallel) in numpy, sharded for batchpool.

shard:  python3 ep.py --class W --shard 3 --shards 16 --out ep.json
reduce: python3 ep.py --reduce DIR      (sums every ep.json under DIR, verifies, prints)
whole:  python3 ep.py --class S          (one process: run every batch, verify, print)
calls:  call = "ep:shard" and call = "ep:verify" in a spec (see call-a.toml)

The kernel follows the NPB 3.x specification of EP: 2^M pairs of uniform deviates in
(-1, 1) from the NPB linear congruential generator x <- 5^13 x mod 2^46 (seed 271828183),
taken in batches of 2^16 pairs ("mk = 16"); each pair inside the unit circle becomes a
pair of Gaussian deviates by the Marsaglia polar method. The results are the sums sx, sy
of the deviates and the counts q[l] of pairs whose larger |deviate| lies in [l, l+1).

Why it shards exactly: batch k starts at seed * a^(2^17 k) mod 2^46, found by repeated
squaring (NPB's own jump-ahead), so a shard computes only its contiguous range of batches.
Every generator value is an exact 46-bit integer, and every batch is summed the same way
whichever shard runs it; the batch sums are then added exactly (as integers in units of
2^-1074), so 1, 3 or 16 shards give bit-identical sx, sy and q.

Verification uses the published reference values: sx and sy of NPB 3.3 (relative error
<= 1e-8), and, as a cross-check of the same run, NPB 3.4's sums of |X| and |Y| and its
count of Gaussian pairs.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The NPB generator: x_{i+1} = A x_i mod 2^46, started from SEED.
A = 5**13
SEED = 271_828_183
MOD_BITS = 46
MASK = (1 << MOD_BITS) - 1
#: Pairs per batch is 2^MK; a batch uses 2 * 2^MK generator values.
MK = 16
NK = 1 << MK
#: Annuli counted: q[l] for l = 0..NQ-1.
NQ = 10
#: Relative error allowed by NPB's verify().
EPSILON = 1e-8
#: Partial sums are exact integers in units of 2^-SCALE_BITS (the smallest double's unit).
SCALE_BITS = 1074


@dataclass(frozen=True)
class NpbClass:
    """One problem class: M (2^M pairs) and its published reference values."""

    name: str
    m: int
    sx: float  # NPB 3.3 ep verify(): sum of X
    sy: float  # NPB 3.3: sum of Y
    sum_abs_x: float  # NPB 3.4 verify(): sum of |X|
    sum_abs_y: float  # NPB 3.4: sum of |Y|
    gaussian_pairs: int  # NPB 3.4: gc, the number of accepted pairs


CLASSES: dict[str, NpbClass] = {
    c.name: c
    for c in (
        NpbClass("S", 24, -3.247834652034740e3, -6.958407078382297e3,
                 1.051299420395306e7, 1.051517131857535e7, 13_176_389),
        NpbClass("W", 25, -2.863319731645753e3, -6.320053679109499e3,
                 2.102505525182392e7, 2.103162209578822e7, 26_354_769),
        NpbClass("A", 28, -4.295875165629892e3, -1.580732573678431e4,
                 1.682235632304711e8, 1.682195123368299e8, 210_832_767),
        NpbClass("B", 30, 4.033815542441498e4, -2.660669192809235e4,
                 6.728927543423024e8, 6.728951822504275e8, 843_345_606),
        NpbClass("C", 32, 4.764367927995374e4, -8.084072988043731e4,
                 2.691444083862931e9, 2.691519118724585e9, 3_373_275_903),
    )
}

SUMS = ("sx", "sy", "sum_abs_x", "sum_abs_y")


# ------------------------------------------------------------------ the generator
def step(x: int) -> int:
    """One step of the NPB generator (Python ints: the exact reference for the rest)."""
    return A * x & MASK


def power(base: int, k: int) -> int:
    """base^k mod 2^46 by repeated squaring: NPB's jump-ahead, O(log k) products."""
    result = 1
    base &= MASK
    while k:
        if k & 1:
            result = result * base & MASK
        base = base * base & MASK
        k >>= 1
    return result


def jump(x: int, k: int) -> int:
    """The generator state k steps after x, without taking the k steps."""
    return x * power(A, k) & MASK


def batch_seed(batch: int, seed: int = SEED) -> int:
    """State just before batch `batch` (0-based); each batch takes 2 * NK steps."""
    return jump(seed, 2 * NK * batch)


@functools.cache
def _multipliers() -> tuple[np.ndarray, np.ndarray]:
    """A^(2i+1) and A^(2i+2) mod 2^46 for i < NK: the steps to each pair's two values.

    Built by doubling: the table for 2n steps is the table for n steps and that table
    times A^n. Products of 46-bit numbers overflow uint64, but uint64 arithmetic is exact
    modulo 2^64 and 2^46 divides 2^64, so masking the wrapped product to 46 bits gives
    exactly (a * b) mod 2^46, the same as NPB's split 23-bit arithmetic.
    """
    mask = np.uint64(MASK)
    table = np.array([A], dtype=np.uint64)
    while len(table) < 2 * NK:
        table = np.concatenate([table, (table * np.uint64(power(A, len(table)))) & mask])
    return np.ascontiguousarray(table[0::2]), np.ascontiguousarray(table[1::2])


def batch_states(batch: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The 46-bit generator values of batch `batch`: the first and second of each pair."""
    start = np.uint64(batch_seed(batch, seed))
    odd, even = _multipliers()
    mask = np.uint64(MASK)
    return (odd * start) & mask, (even * start) & mask


def batch_uniforms(batch: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """The batch's pairs as doubles in (-1, 1): 2 * x * 2^-46 - 1, exact as in NPB."""
    first, second = batch_states(batch, seed)
    scale = 2.0 ** (1 - MOD_BITS)
    return first.astype(np.float64) * scale - 1.0, second.astype(np.float64) * scale - 1.0


# ------------------------------------------------------------------ exact sums
def to_exact(value: float) -> int:
    """`value` as an exact integer count of 2^-1074, so that sums never round."""
    numerator, denominator = value.as_integer_ratio()
    return numerator << (SCALE_BITS - denominator.bit_length() + 1)


def from_exact(units: int) -> float:
    """The double nearest to units * 2^-1074 (int / int division is correctly rounded)."""
    return units / (1 << SCALE_BITS)


# ------------------------------------------------------------------ the kernel
def run_batches(start: int, stop: int, seed: int = SEED) -> dict[str, Any]:
    """Gaussian pairs of batches [start, stop): exact sums and annulus counts."""
    exact = dict.fromkeys(SUMS, 0)
    counts = np.zeros(NQ, dtype=np.int64)
    for batch in range(start, stop):
        x1, x2 = batch_uniforms(batch, seed)
        t1 = x1 * x1 + x2 * x2
        inside = t1 <= 1.0
        x1, x2, t1 = x1[inside], x2[inside], t1[inside]
        t2 = np.sqrt(-2.0 * np.log(t1) / t1)
        t3, t4 = x1 * t2, x2 * t2
        a3, a4 = np.abs(t3), np.abs(t4)
        annulus = np.bincount(np.maximum(a3, a4).astype(np.intp), minlength=NQ)
        if len(annulus) > NQ:  # a deviate of 10 or more: unreachable for classes S-C
            raise ArithmeticError(f"batch {batch}: a deviate beyond q[{NQ - 1}]")
        counts += annulus
        for name, values in zip(SUMS, (t3, t4, a3, a4), strict=True):
            exact[name] += to_exact(float(values.sum()))
    return {"exact": exact, "q": [int(c) for c in counts]}


def shard_batches(batches: int, shard: int, shards: int) -> tuple[int, int]:
    """Contiguous batch range [start, stop) of shard `shard` out of `shards`."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
    return shard * batches // shards, (shard + 1) * batches // shards


def run_shard(npb_class: NpbClass, shard: int, shards: int, seed: int = SEED) -> dict[str, Any]:
    """One shard's JSON result: its batch range, exact sums (hex) and counts, timings."""
    batches = 1 << (npb_class.m - MK)
    start, stop = shard_batches(batches, shard, shards)
    started = time.time()
    t0 = time.perf_counter()
    part = run_batches(start, stop, seed)
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {
        "benchmark": "NPB EP", "class": npb_class.name, "m": npb_class.m, "seed": seed,
        "shard": shard, "shards": shards, "batches": [start, stop],
        "q": part["q"], "gaussian_pairs": sum(part["q"]),
    }
    for name in SUMS:
        result[name] = from_exact(part["exact"][name])
        result[f"{name}_exact"] = hex(part["exact"][name])
    result.update(seconds=seconds, started=started, finished=time.time(),
                  node=os.environ.get("BATCHPOOL_NODE") or socket.gethostname())
    return result


# ------------------------------------------------------------------ reduce and verify
class ShardError(ValueError):
    """The shard files do not add up to one complete run (missing, overlapping, mixed)."""


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the shards exactly, after checking that they cover every batch exactly once."""
    if not parts:
        raise ShardError("no shard results")
    names = {(p["class"], p["m"], p["seed"]) for p in parts}
    if len(names) != 1:
        raise ShardError(f"shards of different runs (class, M, seed): {sorted(names)}")
    name, m, seed = names.pop()
    batches = 1 << (m - MK)
    ranges = sorted((p["batches"][0], p["batches"][1]) for p in parts)
    covered = 0
    for start, stop in ranges:
        if start != covered:
            what = "missing" if start > covered else "computed twice"
            raise ShardError(f"batches {min(start, covered)}..{max(start, covered) - 1} "
                             f"are {what}")
        covered = stop
    if covered != batches:
        raise ShardError(f"batches {covered}..{batches - 1} are missing")
    exact = dict.fromkeys(SUMS, 0)
    for part in parts:
        for key in SUMS:
            units = int(part[f"{key}_exact"], 16)
            if from_exact(units) != part[key]:
                raise ShardError(f"shard {part.get('shard')}: {key} does not match "
                                 f"{key}_exact (edited or corrupt file)")
            exact[key] += units
    q = [sum(p["q"][i] for p in parts) for i in range(NQ)]
    return {
        "class": name, "m": m, "seed": seed, "batches": batches, "shards": len(parts),
        "pairs": 1 << m, "q": q, "gaussian_pairs": sum(q),
        **{key: from_exact(exact[key]) for key in SUMS},
        "seconds_sum": sum(p["seconds"] for p in parts),
        "seconds_max": max(p["seconds"] for p in parts),
        "span": max(p["finished"] for p in parts) - min(p["started"] for p in parts),
        "nodes": sorted({p.get("node", "?") for p in parts}),
    }


def checks(result: dict[str, Any]) -> list[tuple[str, float, float, float, bool]]:
    """(label, computed, reference, relative error, passed) for each verified value."""
    npb_class = CLASSES.get(result["class"])
    if npb_class is None or npb_class.m != result["m"]:
        return []
    rows = []
    for label, key in (("sx      (NPB 3.3)", "sx"), ("sy      (NPB 3.3)", "sy"),
                       ("sum|X|  (NPB 3.4)", "sum_abs_x"), ("sum|Y|  (NPB 3.4)", "sum_abs_y"),
                       ("pairs   (NPB 3.4)", "gaussian_pairs")):
        computed, reference = float(result[key]), float(getattr(npb_class, key))
        error = abs((computed - reference) / reference)
        rows.append((label, computed, reference, error, not math.isnan(error)
                     and error <= EPSILON))
    return rows


def _number(value: float) -> str:
    """Counts as integers, sums in full precision."""
    return f"{int(value):,}" if value.is_integer() and abs(value) < 2**53 else f"{value:.15e}"


def report(result: dict[str, Any]) -> tuple[str, bool]:
    """The NPB-style result table, and whether verification succeeded."""
    rows = checks(result)
    verified = bool(rows) and all(row[4] for row in rows)
    randoms = 2 * result["pairs"]  # NPB counts generated random numbers as operations
    span, total = result["span"], result["seconds_sum"]
    lines = [
        " NAS Parallel Benchmarks EP (numpy, sharded by batchpool)",
        f" Class           = {result['class']}   (M = {result['m']})",
        f" Pairs           = {result['pairs']:,} (2^{result['m']}) in {result['batches']:,} "
        f"batches of 2^{MK}, {result['shards']} shard(s) on {', '.join(result['nodes'])}",
        f" Gaussian pairs  = {result['gaussian_pairs']:,}",
        f" Sums            = sx {result['sx']:.15e}   sy {result['sy']:.15e}",
        " Counts:",
        *(f"   {i:2d} {n:>14,}" for i, n in enumerate(result["q"])),
        f" {'check':<18} {'computed':>23} {'reference':>23} {'rel. error':>10}",
        *(f" {label:<18} {_number(computed):>23} {_number(reference):>23} {error:10.1e}"
          f"  {'ok' if ok else 'MISMATCH'}" for label, computed, reference, error, ok in rows),
        f" Time in seconds = {span:.2f} (first shard start to last shard end)",
        f" Shard seconds   = {total:.2f} in all, longest shard {result['seconds_max']:.2f}",
        f" Mop/s total     = {randoms / span / 1e6 if span > 0 else math.inf:.2f}",
        f" Mop/s/shard     = {randoms / total / 1e6 if total > 0 else math.inf:.2f}",
    ]
    if not rows:
        lines.append(f" (no reference values for class {result['class']}, M = {result['m']})")
    lines.append(f" Verification    = {'SUCCESSFUL' if verified else 'FAILED'}")
    return "\n".join(lines), verified


def shard(npb_class: str, index: int, shards: int) -> dict[str, Any]:
    """A shard as a Python call (``call = "ep:shard"``): its result, as JSON."""
    return run_shard(CLASSES[npb_class], index, shards)


def verify(inputs: str | None = None) -> dict[str, Any]:
    """The reduce as a call: combine the shards under `inputs` ($BATCHPOOL_INPUTS_DIR).

    Reads the shards' return values (result.json) or ep.json files, writes
    ep-result.json and prints the table like ``--reduce``; raises when the shards do not
    add up or the sums fail verification (the task fails).
    """
    directory = Path(inputs or os.environ["BATCHPOOL_INPUTS_DIR"])
    files = sorted(directory.rglob("result.json")) or sorted(directory.rglob("ep.json"))
    result = combine([json.loads(f.read_text()) for f in files])
    text, verified = report(result)
    print(text)
    Path("ep-result.json").write_text(json.dumps({**result, "verified": verified}, indent=2)
                                      + "\n")
    if not verified:
        raise ArithmeticError(f"NPB EP class {result['class']} failed verification")
    return {**{key: result[key] for key in ("class", "m", "gaussian_pairs")},
            "verified": verified}


def reduce(directory: Path, out: Path) -> int:
    """Combine every ep.json under `directory`: 0 verified, 1 failed, 2 bad shard set."""
    files = sorted(directory.rglob("ep.json"))
    try:
        result = combine([json.loads(f.read_text()) for f in files])
    except (ShardError, KeyError, TypeError, ValueError) as exc:
        print(f"ep.py: cannot reduce {len(files)} ep.json file(s) under {directory}: {exc}",
              file=sys.stderr)
        return 2
    text, verified = report(result)
    print(text)
    out.write_text(json.dumps({**result, "verified": verified}, indent=2) + "\n")
    return 0 if verified else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--class", dest="npb_class", choices=sorted(CLASSES), default="S")
    parser.add_argument("--shard", type=int, help="this shard's number, 0..SHARDS-1")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--seed", type=int, default=SEED,
                        help="generator seed (only the NPB seed verifies)")
    parser.add_argument("--out", type=Path, default=None,
                        help="shard result file (default ep.json) or reduce result file "
                             "(default ep-result.json)")
    parser.add_argument("--reduce", type=Path, metavar="DIR",
                        help="combine and verify every ep.json found under DIR")
    args = parser.parse_args(argv)
    if args.reduce is not None:
        return reduce(args.reduce, args.out or Path("ep-result.json"))
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    npb_class = CLASSES[args.npb_class]
    if args.shard is None:  # the whole class in this process, then verify
        part = run_shard(npb_class, 0, 1, args.seed)
        text, verified = report(combine([part]))
        print(text)
        return 0 if verified else 1
    if not 0 <= args.shard < args.shards:
        parser.error(f"--shard must be in 0..{args.shards - 1}")
    part = run_shard(npb_class, args.shard, args.shards, args.seed)
    (args.out or Path("ep.json")).write_text(json.dumps(part, indent=2) + "\n")
    start, stop = part["batches"]
    print(f"class {npb_class.name} shard {args.shard}/{args.shards}: batches {start}..{stop - 1}"
          f", {part['gaussian_pairs']:,} Gaussian pairs, sx {part['sx']:.12e}, "
          f"sy {part['sy']:.12e}, {part['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
