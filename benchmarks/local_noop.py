"""No-op throughput and controller overhead on the local pool, against xargs -P <cores>.

    python3 benchmarks/local_noop.py [--tasks 5000] [--repeat 3]

Runs N tasks of `true` through batchpool (controller in this process, one local node
with one slot per core) and the same N `sh -c true` commands through
`xargs -P <cores>`, alternating, in the same run. Prints tasks/s for both, their ratio
(target >= 0.5), and the controller's CPU per task (target <= 100 us): this process's
CPU for the N-task run minus a 1-task run (start-up, imports), divided by N - 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

from common import private_home, report, run_local

SPEC = 'name = "noop"\n[[tasks]]\nid = "t"\ncommand = "true"\narray = "1-{n}"\n'


def xargs_rate(n: int, cores: int) -> float:
    commands = "".join("true\n" for _ in range(n)).encode()
    started = time.perf_counter()
    subprocess.run(["xargs", "-P", str(cores), "-I{}", "sh", "-c", "{}"], input=commands,
                   check=True)
    return n / (time.perf_counter() - started)


def batchpool_run(n: int) -> tuple[float, float]:
    """(tasks/s, controller CPU seconds) of one N-task run."""
    with private_home() as home:
        progress, wall, cpu = run_local(SPEC.format(n=n), home)
        assert progress.succeeded == n, progress
    return n / wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    batchpool_run(1)  # warm up imports
    ours, theirs, overheads = [], [], []
    for _ in range(args.repeat):
        _, base_cpu = batchpool_run(1)
        rate, cpu = batchpool_run(args.tasks)
        ours.append(rate)
        overheads.append((cpu - base_cpu) / (args.tasks - 1))
        theirs.append(xargs_rate(args.tasks, cores))
    rate, baseline = statistics.median(ours), statistics.median(theirs)
    print(f"# {args.tasks} no-op tasks, {cores} cores, median of {args.repeat}")
    report("batchpool local pool", rate, "tasks/s")
    report(f"xargs -P {cores} sh -c true", baseline, "tasks/s")
    report("ratio batchpool / xargs", rate / baseline, "x", "target >= 0.5")
    report("controller CPU per task", statistics.median(overheads) * 1e6, "us",
           "target <= 100")


if __name__ == "__main__":
    main()
