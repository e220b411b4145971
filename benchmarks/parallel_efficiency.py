"""Parallel speed-up on the local pool: batchpool against one serial process doing the same work.

    python3 benchmarks/parallel_efficiency.py [--quick] [--repeat 2] [--only pi ep]
                                              [--json FILE]

In one run, on the local pool (one slot per core), each in a fresh private
BATCHPOOL_HOME under a /tmp/bench-parallel-* directory (removed at the end):

  pi serial        one process: pi.count(seed, 20M) for 64 seeds in a loop, then combine;
  pi command       `batchpool run` of jobs/montecarlo-pi/job.toml with --samples 20000000
                   (64 `python3 pi.py` processes + the reduce), the whole CLI process timed;
  pi call          `batchpool run` of call.toml with samples = 20000000 (64 calls in warm
                   workers + the reduce), the whole CLI process timed;
  pi Executor      batchpool.Executor().map(pi.count, range(64), [20M] * 64) in this
                   process, Executor start-up and shutdown included, then combine;
  pi service       the same call.toml given to a controller service that is already
                   running (`batchpool controller run`, started once for the whole
                   benchmark and warmed up by a small job, its pool kept up between
                   jobs): `batchpool submit --wait` timed as a whole process;
  EP serial        `python3 ep.py --class A` (NPB EP, 2^28 pairs, verified);
  EP command       `batchpool run jobs/npb-ep/job-a.toml` (32 shards + verify);
  EP call          `batchpool run jobs/npb-ep/call-a.toml` (32 ep.shard calls in warm
                   workers + the ep.verify call), the whole CLI process timed;
  EP service       call-a.toml submitted to the running service, as pi service;
  EP Executor      Executor().map(ep.run_shard, [class A] * 32, range(32), [32] * 32), then
                   combine and verify in this process;
  pi / EP halves   no batchpool: one plain process per core started at once, each doing
                   its share of the serial work (32 seeds; EP shard i of 2), timed until
                   the last ends. What this machine allows for a parallel run that
                   starts its own interpreters: the ceiling the other forms are read against.

Speed-up = serial seconds / batchpool seconds (best of --repeat each; the median of the
per-round ratios is printed too), and "of the ceiling": each round's halves seconds over
the form's seconds, median of rounds (1 = as fast as the machine allows). Target on 2
cores: >= 1.8x for the call form (run or service) and the Executor. --quick: 2M samples,
EP class W. Before each measurement the 1-minute load average must fall to --max-load
(waiting up to 10 minutes): other engineers share this machine; the load measured is
printed, and the share of the machine other processes used during the measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import private_home, report
from executor_dask import (
    batchpool_revision,
    check_unchanged,
    machine_busy_seconds,
    others_share,
    wait_until_quiet,
)

import batchpool
from batchpool.devcluster import descendants

REPO = Path(__file__).resolve().parent.parent
PI_DIR = REPO / "jobs" / "montecarlo-pi"
EP_DIR = REPO / "jobs" / "npb-ep"
TARGET = 1.8
CORES = len(os.sched_getaffinity(0))
TASKS = 64
EP_SHARDS = 32
SERIAL_PI = """
import json, sys, pi
samples, tasks = int(sys.argv[1]), int(sys.argv[2])
result = pi.combine([pi.count(seed, samples) for seed in range(tasks)])
print(json.dumps(result))
sys.exit(0 if result["error"] <= 5 * result["stderr"] else 2)
"""
HALF_PI = """
import sys, pi
samples, start, stop = (int(a) for a in sys.argv[1:])
print(pi.combine([pi.count(seed, samples) for seed in range(start, stop)]))
"""
HALF_EP = ("import sys, ep; "
           "ep.run_shard(ep.CLASSES[sys.argv[1]], int(sys.argv[2]), int(sys.argv[3]))")


@dataclass
class Series:
    """Wall seconds of one method, the load before each run and others' share of the
    machine during it: what a reader needs to judge a figure taken on a shared machine."""

    seconds: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)  # others' share of the machine

    @property
    def best(self) -> float:
        return min(self.seconds)

    def spread(self) -> str:
        return (f"{len(self.seconds)} runs: " + ", ".join(f"{s:.2f}" for s in self.seconds)
                + f"; load {min(self.loads):.2f}-{max(self.loads):.2f}, others "
                + "/".join(f"{o:.0%}" for o in self.others))


def _tree_cpu(pids: Iterable[int]) -> float:
    """CPU seconds of `pids` (present, live or zombie): their own time plus that of the
    children they reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            total += sum(int(v) for v in fields[11:15]) / tick
    return total


class OwnCpu:
    """CPU seconds this benchmark's processes use during a measurement, so that the rest
    of the machine's busy time is what others ran meanwhile.

    Ours: this process and its reaped descendants (os.times), descendants still present,
    and descendants orphaned on the way (the local agent leaves its warm workers to init):
    a thread notes every descendant each `interval` s. Ours that were orphaned and reaped
    before the end are missed and count as others', so `others` is an upper bound."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.seen: set[int] = set()
        self.used = 0.0
        self._start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _total(self) -> float:
        times = os.times()
        now = descendants(os.getpid())
        orphans = self.seen - set(now)
        return (times.user + times.system + times.children_user + times.children_system
                + _tree_cpu(now) + _tree_cpu(sorted(orphans)))

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.seen.update(descendants(os.getpid()))

    def __enter__(self) -> OwnCpu:
        self._start = self._total()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.used = self._total() - self._start


def batchpool_command() -> list[str]:
    """The `batchpool` script installed with this interpreter (what a user runs), else
    `python -m batchpool`. Not the first on PATH: a pyenv shim there is a bash script
    that costs 0.1 s per run, which is pyenv's, not batchpool's."""
    beside = Path(sys.executable).parent / "batchpool"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("batchpool")
    return [found] if found else [sys.executable, "-m", "batchpool"]


def run_process(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, stdout) of argv run to its end; a failure stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... exited {done.returncode}:\n"
                           f"{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return seconds, done.stdout


def side_by_side(commands: list[list[str]], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of `commands` started at once, until the last has ended (all must
    succeed)."""
    started = time.perf_counter()
    procs = [subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
             for argv in commands]
    codes = [proc.wait() for proc in procs]
    seconds = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"side by side: exit statuses {codes}")
    return seconds


@contextmanager
def fresh_home(root: Path, name: str) -> Iterator[Path]:
    """An empty BATCHPOOL_HOME for one run (in os.environ too, for the Executor)."""
    home = root / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    old = os.environ.get("BATCHPOOL_HOME")
    os.environ["BATCHPOOL_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("BATCHPOOL_HOME", None)
        else:
            os.environ["BATCHPOOL_HOME"] = old
        shutil.rmtree(home, ignore_errors=True)


def batchpool_run(spec: Path, config: Path, root: Path, expect: int) -> float:
    """Wall seconds of `batchpool run SPEC --json` as a whole process, all tasks succeeded."""
    with fresh_home(root, "home-run") as home:
        env = {**os.environ, "BATCHPOOL_HOME": str(home)}
        seconds, out = run_process([*batchpool_command(), "run", str(spec), "--config",
                                    str(config), "--json"], spec.parent, env)
    result = json.loads(out)
    if result.get("succeeded") != expect:
        raise RuntimeError(f"{spec.name}: {result.get('succeeded')} of {expect} succeeded")
    return seconds


@contextmanager
def running_service(root: Path, warm_up: Path) -> Iterator[Path]:
    """A controller service on its own BATCHPOOL_HOME, its local pool up and its warm
    workers' imports done by one `warm_up` job; yields that home. Stopped at the end."""
    home = root / "home-service"
    home.mkdir()
    config = root / "service.toml"
    config.write_text('default_pool = "local"\n[pools.local]\nprovider = "local"\n'
                      'idle_timeout = "1h"   # up for the whole benchmark\n')
    env = {**os.environ, "BATCHPOOL_HOME": str(home)}
    service = subprocess.Popen([*batchpool_command(), "controller", "run", "--config",
                                str(config)], cwd=root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = home / "batchpool.db.controller.lock"
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text().strip() == str(service.pid)):
            if service.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the controller service did not start")
            time.sleep(0.05)
        run_process([*batchpool_command(), "submit", str(warm_up), "--wait"], root, env)
        yield home
    finally:
        service.terminate()
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def service_submit(spec: Path, home: Path, expect: int) -> float:
    """Wall seconds of `batchpool submit SPEC --wait --json` to a running service."""
    env = {**os.environ, "BATCHPOOL_HOME": str(home)}
    seconds, out = run_process([*batchpool_command(), "submit", str(spec), "--wait",
                                "--json"], spec.parent, env)
    result = json.loads(out)
    if result.get("succeeded") != expect:
        raise RuntimeError(f"{spec.name}: {result.get('succeeded')} of {expect} succeeded")
    return seconds


def shares(n: int) -> list[tuple[int, int]]:
    """[start, stop) of each core's contiguous share of n items."""
    return [(i * n // CORES, (i + 1) * n // CORES) for i in range(CORES)]


def with_text(source: Path, dest: Path, old: str, new: str) -> Path:
    """`source` copied to `dest` with `old` replaced by `new` (which must be there)."""
    text = source.read_text()
    if old not in text:
        raise RuntimeError(f"{source}: {old!r} not found; the spec changed")
    dest.write_text(text.replace(old, new))
    return dest


def importable(directory: Path) -> None:
    """Make the jobs' modules (pi, ep) importable here and in the local pool's workers
    (they inherit PYTHONPATH), so the Executor sends its functions by reference: by value
    would not do, as ep's functools.cache wrapper is always pickled by reference."""
    sys.path.insert(0, str(directory))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)


def executor_pi(config: Path, root: Path, samples: int) -> float:
    """Wall seconds of an Executor session mapping pi.count over 64 seeds, then combine."""
    import pi  # type: ignore[import-not-found]

    with fresh_home(root, "home-executor"):
        started = time.perf_counter()
        with batchpool.Executor(config=config, name="bench-pi") as ex:
            parts = list(ex.map(pi.count, range(TASKS), itertools.repeat(samples)))
        result = pi.combine(parts)
        seconds = time.perf_counter() - started
    if result["samples"] != samples * TASKS or result["error"] > 5 * result["stderr"]:
        raise RuntimeError(f"Executor pi: wrong result {result}")
    return seconds


def executor_ep(config: Path, root: Path, npb: str) -> float:
    """Wall seconds of an Executor session mapping ep.run_shard over 32 shards, then
    combine and verify against the NPB reference values."""
    import ep  # type: ignore[import-not-found]

    with fresh_home(root, "home-executor"):
        started = time.perf_counter()
        with batchpool.Executor(config=config, name="bench-ep") as ex:
            parts = list(ex.map(ep.run_shard, itertools.repeat(ep.CLASSES[npb]),
                                range(EP_SHARDS), itertools.repeat(EP_SHARDS)))
        _, verified = ep.report(ep.combine(parts))
        seconds = time.perf_counter() - started
    if not verified:
        raise RuntimeError("Executor EP: verification failed")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2M samples, EP class W")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=["pi", "ep"])
    parser.add_argument("--max-load", type=float, default=1.0,
                        help="wait (up to 10 min) until the 1-minute load is at most this")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    wanted = args.only or ["pi", "ep"]
    samples = 2_000_000 if args.quick else 20_000_000
    npb = "W" if args.quick else "A"
    os.environ.pop("BATCHPOOL_CONFIG", None)
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    series: dict[str, Series] = {}

    with contextlib.ExitStack() as stack:
        home = stack.enter_context(private_home())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-parallel-",
                                                                   dir="/tmp")))
        config = tmp / "batchpool.toml"
        config.write_text('# the built-in local pool: one slot per core\n'
                          'default_pool = "local"\n')
        shutil.copy(PI_DIR / "pi.py", tmp / "pi.py")
        shutil.copy(EP_DIR / "ep.py", tmp / "ep.py")
        importable(tmp)
        pi_job = with_text(PI_DIR / "job.toml", tmp / "pi-job.toml", "--samples 2000000",
                           f"--samples {samples}")
        pi_call = with_text(PI_DIR / "call.toml", tmp / "pi-call.toml", "samples = 2000000",
                            f"samples = {samples}")
        ep_job = with_text(EP_DIR / "job-a.toml", tmp / "ep-job.toml", "--class A",
                           f"--class {npb}")
        ep_call = with_text(EP_DIR / "call-a.toml", tmp / "ep-call.toml", '"A", "{index}"',
                            f'"{npb}", "{{index}}"')
        warm_up = with_text(PI_DIR / "call.toml", tmp / "warm-up.toml", "samples = 2000000",
                            "samples = 1000")
        service_home = stack.enter_context(running_service(tmp, warm_up))
        env = {**os.environ, "BATCHPOOL_HOME": str(home)}
        methods: dict[str, Callable[[], float]] = {}
        if "pi" in wanted:
            methods |= {
                "pi serial": lambda: run_process(
                    [sys.executable, "-c", SERIAL_PI, str(samples), str(TASKS)], tmp, env)[0],
                "pi command": lambda: batchpool_run(pi_job, config, tmp, TASKS + 1),
                "pi call": lambda: batchpool_run(pi_call, config, tmp, TASKS + 1),
                "pi service": lambda: service_submit(pi_call, service_home, TASKS + 1),
                "pi Executor": lambda: executor_pi(config, tmp, samples),
                "pi halves": lambda: side_by_side(
                    [[sys.executable, "-c", HALF_PI, str(samples), str(start), str(stop)]
                     for start, stop in shares(TASKS)], tmp, env),
            }
        if "ep" in wanted:
            methods |= {
                "EP serial": lambda: run_process(
                    [sys.executable, "ep.py", "--class", npb], tmp, env)[0],
                "EP command": lambda: batchpool_run(ep_job, config, tmp, EP_SHARDS + 1),
                "EP call": lambda: batchpool_run(ep_call, config, tmp, EP_SHARDS + 1),
                "EP service": lambda: service_submit(ep_call, service_home, EP_SHARDS + 1),
                "EP Executor": lambda: executor_ep(config, tmp, npb),
                "EP halves": lambda: side_by_side(
                    [[sys.executable, "-c", HALF_EP, npb, str(i), str(CORES)]
                     for i in range(CORES)], tmp, env),
            }
        revision = batchpool_revision()
        print(f"# local pool, {CORES} CPUs; pi: {TASKS} x "
              f"{samples:,} samples; NPB EP class {npb} in {EP_SHARDS} shards; "
              f"{args.repeat} round(s); batchpool {revision} from "
              f"{Path(batchpool.__file__).parent}",
              flush=True)
        for round_ in range(args.repeat):
            for name, measure in methods.items():
                s = series.setdefault(name, Series())
                s.loads.append(wait_until_quiet(f"{name} (round {round_ + 1})", args.max_load))
                machine = machine_busy_seconds()
                with OwnCpu() as ours:
                    s.seconds.append(measure())
                others = (machine_busy_seconds() - machine) - ours.used
                s.others.append(others_share(others, s.seconds[-1]))
                print(f"#   {name}: {s.seconds[-1]:.2f} s (others used {s.others[-1]:.0%} of "
                      "the machine meanwhile)", flush=True)

    check_unchanged(revision)
    print(f"# best of {args.repeat}: wall seconds, and speed-up = serial / batchpool")
    for name, s in series.items():
        report(name, s.best, "s", s.spread())
    speedups: dict[str, dict[str, Any]] = {}
    for name, s in series.items():
        kind, _, form = name.partition(" ")
        if form == "serial":
            continue
        serial = series[f"{kind} serial"]
        speedup = serial.best / s.best
        rounds = [a / b for a, b in zip(serial.seconds, s.seconds, strict=True)]
        target = TARGET if form in ("call", "service", "Executor") else None
        verdict = "the machine's ceiling, no batchpool; " if form == "halves" else \
            "" if target is None else (
                f"target >= {target:g}: {'met' if speedup >= target else 'NOT MET'}; ")
        median = statistics.median(rounds)
        speedups[name] = {"speedup": speedup, "per_round": rounds, "median_of_rounds": median,
                          "target": target}
        ceiling = series.get(f"{kind} halves")
        if ceiling is not None and form != "halves":
            # each round against the same round's ceiling: the machine's drift cancels out
            share = statistics.median(h / b for h, b in zip(ceiling.seconds, s.seconds,
                                                              strict=True))
            speedups[name]["of_ceiling"] = share
            verdict += f"{share:.2f} of the ceiling (median of rounds); "
        report(f"speed-up {name}", speedup, "x",
               verdict + f"median of rounds {median:.2f}; per round "
               + ", ".join(f"{r:.2f}" for r in rounds))
    if args.json:
        args.json.write_text(json.dumps({
            "batchpool": revision, "cpus": CORES, "samples": samples,
            "npb_class": npb, "repeat": args.repeat,
            "series": {k: {"seconds": s.seconds, "best": s.best, "load_before": s.loads,
                           "others_share": s.others}
                       for k, s in series.items()},
            "speedups": speedups}, indent=2) + "\n")


if __name__ == "__main__":
    main()
