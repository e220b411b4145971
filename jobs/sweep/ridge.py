"""Ridge regression parameter sweep: test error over regularisation alpha x training size n.

point:  python3 ridge.py --alpha 0.1 --n 200 --out result.json
reduce: python3 ridge.py --reduce DIR     (reads every result.json under DIR)

Every task sees the same synthetic problem (fixed seed): d = 40 correlated features
(Toeplitz covariance, rho = 0.8), true weights decaying like 1/k, Gaussian noise of
variance 1, and a fixed test set. A task fits ridge regression in closed form on
`repeats` training sets of size n and reports the mean test MSE (the noise floor is
1.0) with its standard error. The training sets depend on n and the repeat only, not
on alpha, so all alphas of one n are compared on the same data (common random numbers)
and the grid's differences are not drawing noise.

The reduce prints the grid (rows alpha, columns n), marks the best alpha for each n, and
names the best point: with little data a large alpha wins, with plenty a small one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 40
RHO = 0.8
NOISE = 1.0
TEST_SIZE = 4000
PROBLEM_SEED = 2024


def problem() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shared problem: Cholesky factor of the covariance, true weights, test set."""
    lags = np.abs(np.subtract.outer(np.arange(FEATURES), np.arange(FEATURES)))
    chol = np.linalg.cholesky(RHO ** lags)
    rng = np.random.default_rng(PROBLEM_SEED)
    weights = rng.choice([-1.0, 1.0], FEATURES) / np.arange(1, FEATURES + 1)
    x_test = rng.standard_normal((TEST_SIZE, FEATURES)) @ chol.T
    y_test = x_test @ weights + NOISE * rng.standard_normal(TEST_SIZE)
    return chol, weights, x_test, y_test


def fit(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge weights minimising mean((Xw - y)^2) + alpha |w|^2: (X'X + n alpha I) w = X'y.

    The penalty is per sample (as in scikit-learn's mean-loss form), so the best alpha
    shrinks as n grows instead of staying put; no intercept, the data are centred.
    """
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += len(x) * alpha
    return np.linalg.solve(gram, x.T @ y)


def evaluate(alpha: float, n: int, repeats: int = 20) -> dict[str, Any]:
    """Mean test MSE of ridge(alpha) over `repeats` training sets of size n."""
    if alpha < 0 or n < 1 or repeats < 1:
        raise ValueError("need alpha >= 0, n >= 1 and repeats >= 1")
    chol, weights, x_test, y_test = problem()
    test_mse, train_mse, weight_error = [], [], []
    for repeat in range(repeats):
        rng = np.random.default_rng([PROBLEM_SEED, n, repeat])  # independent of alpha
        x = rng.standard_normal((n, FEATURES)) @ chol.T
        y = x @ weights + NOISE * rng.standard_normal(n)
        w = fit(x, y, alpha)
        test_mse.append(float(np.mean((x_test @ w - y_test) ** 2)))
        train_mse.append(float(np.mean((x @ w - y) ** 2)))
        weight_error.append(float(np.linalg.norm(w - weights)))
    spread = float(np.std(test_mse, ddof=1)) / math.sqrt(repeats) if repeats > 1 else 0.0
    return {"alpha": alpha, "n": n, "repeats": repeats, "features": FEATURES,
            "test_mse": float(np.mean(test_mse)), "stderr": spread,
            "train_mse": float(np.mean(train_mse)),
            "weight_error": float(np.mean(weight_error))}


def table(results: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The grid as text (best alpha per n marked '*') and the best point overall."""
    if not results:
        raise ValueError("no results")
    alphas = sorted({r["alpha"] for r in results})
    sizes = sorted({r["n"] for r in results})
    cell = {(r["alpha"], r["n"]): r for r in results}
    best_for = {n: min((r for r in results if r["n"] == n), key=lambda r: r["test_mse"])
                for n in sizes}
    best = min(results, key=lambda r: r["test_mse"])
    width = 18
    lines = [f"ridge regression, d = {FEATURES} features: mean test MSE (noise floor "
             f"{NOISE**2:.2f}) +/- standard error; * = best alpha for that n",
             "alpha \\ n".rjust(10) + "".join(f"{n:>{width}}" for n in sizes)]
    for alpha in alphas:
        row = f"{alpha:>10g}"
        for n in sizes:
            r = cell.get((alpha, n))
            if r is None:
                row += f"{'missing':>{width}}"
                continue
            mark = "*" if r is best_for[n] else " "
            row += f"{r['test_mse']:>{width - 10}.4f} +/-{r['stderr']:.4f}{mark}"
        lines.append(row)
    missing = len(alphas) * len(sizes) - len(cell)
    if missing:
        lines.append(f"{missing} grid point(s) missing")
    lines.append("best alpha per n: " + ", ".join(
        f"n={n}: {best_for[n]['alpha']:g}" for n in sizes))
    lines.append(f"best point: alpha = {best['alpha']:g}, n = {best['n']}: test MSE "
                 f"{best['test_mse']:.4f} +/- {best['stderr']:.4f} "
                 f"(|w - w_true| = {best['weight_error']:.3f})")
    summary = {"best": best, "best_alpha_per_n": {str(n): best_for[n]["alpha"] for n in sizes},
               "grid": sorted(results, key=lambda r: (r["alpha"], r["n"])),
               "missing": missing}
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None,
                        help="result.json for a point, sweep.json for the reduce")
    parser.add_argument("--reduce", type=Path, metavar="DIR",
                        help="tabulate every result.json found under DIR")
    args = parser.parse_args(argv)
    if args.reduce is None:
        result = evaluate(args.alpha, args.n, args.repeats)
        (args.out or Path("result.json")).write_text(json.dumps(result, indent=2) + "\n")
        print(f"alpha = {args.alpha:g}, n = {args.n}: test MSE {result['test_mse']:.4f} "
              f"+/- {result['stderr']:.4f}")
        return 0
    files = sorted(args.reduce.rglob("result.json"))
    if not files:
        print(f"no result.json under {args.reduce}", file=sys.stderr)
        return 2
    text, summary = table([json.loads(f.read_text()) for f in files])
    print(text)
    (args.out or Path("sweep.json")).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
