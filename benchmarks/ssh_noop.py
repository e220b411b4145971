"""No-op throughput over SSH: batchpool against GNU Parallel and two raw asyncssh baselines.

    python3 benchmarks/ssh_noop.py [--nodes 4] [--tasks 2000] [--parallel-tasks 300]
                                   [--exec-tasks 500] [--repeat 2] [--json FILE]

Brings up its own dev cluster (real sshd daemons on 127.0.0.1) under a private
/tmp/bench-ssh-noop-* directory, always stops it at the end (Ctrl-C included), and in
the same run measures tasks/s of `true` through:

  batchpool       `batchpool run` of a `true` array on the cluster's pool (slots_per_node
                  left at the dev-cluster default, "auto": one per core), timed as a whole
                  process: start-up, connecting, agents, every task, shutdown;
  parallel        GNU Parallel --sshloginfile with --controlmaster and -j SLOTS;
  exec channel    asyncssh, one connection per node, one exec channel per task;
  minimal worker  asyncssh, one tiny persistent python3 worker per node.

All four keep SLOTS commands running per node. The slow ones (parallel, exec channel)
run fewer tasks; every figure is tasks/s. Targets, batchpool against each:
parallel >= 25x, exec channel >= 2x, minimal worker >= 0.85x.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baselines.asyncssh_baselines import Node, exec_channels, persistent_workers
from common import dev_cluster as common_dev_cluster
from common import report

import batchpool
from batchpool.devcluster import DevCluster, DevNode

BASELINES = Path(__file__).with_name("baselines")
TARGETS = {"parallel": 25.0, "exec channel": 2.0, "minimal worker": 0.85}
SPEC = ('name = "ssh-noop"\n[defaults]\nmax_attempts = 1\n'
        '[[tasks]]\nid = "noop"\ncommand = "true"\narray = "0-{last}"\n')


# --- the cluster -----------------------------------------------------------------------

@contextlib.contextmanager
def dev_cluster(n: int, prefix: str, keep: bool = False) -> Iterator[tuple[DevCluster, Path]]:
    """The benchmarks' dev cluster (common.dev_cluster); node processes that outlive it
    are stopped before its dir goes."""
    with common_dev_cluster(n, prefix, keep, stop_stragglers) as cluster_and_dir:
        yield cluster_and_dir


def node_processes(tmp: Path, cluster: DevCluster | None = None) -> list[int]:
    """Processes with `tmp` in their command line, other than this one and the cluster's
    sshd listeners: agents (their workdir argument) and the shells starting them."""
    skip = {os.getpid()}
    if cluster is not None:
        skip |= {n.pid for n in cluster.status() if n.pid}
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in skip:
            with contextlib.suppress(OSError):
                if str(tmp).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def wait_quiet(tmp: Path, cluster: DevCluster | None = None, timeout: float = 20.0) -> float:
    """Wait until no node process of this benchmark runs; returns the seconds waited.

    A controller that exits while agents are still starting leaves their shells and
    pythons running, orphaned, until they read end of input; measuring meanwhile would
    share the CPU with them."""
    started = time.monotonic()
    while node_processes(tmp, cluster) and time.monotonic() - started < timeout:
        time.sleep(0.05)
    return time.monotonic() - started


def stop_stragglers(tmp: Path) -> None:
    """After `down`: wait for node processes that outlived their sshd session, then
    SIGTERM the rest (found by `tmp` in their command line, so only processes this
    benchmark caused)."""
    wait_quiet(tmp)
    left = node_processes(tmp)
    if left:
        print(f"# stopping {len(left)} leftover node process(es): {left}", file=sys.stderr)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def running_nodes(cluster: DevCluster) -> list[DevNode]:
    nodes = [n for n in cluster.status() if n.running]
    if not nodes:
        raise RuntimeError(f"no dev cluster node is running under {cluster.root}")
    return nodes


# --- batchpool -------------------------------------------------------------------------

def batchpool_command() -> list[str]:
    found = shutil.which("batchpool")
    return [found] if found else [sys.executable, "-m", "batchpool"]


def children_cpu() -> float:
    """CPU seconds of waited-for child processes (and their waited-for children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class ProcessRun:
    """One timed child process: wall and CPU seconds, and its stdout."""

    seconds: float
    cpu_seconds: float
    stdout: str


def timed_process(argv: Sequence[str], env: dict[str, str], stdin: str = "") -> ProcessRun:
    """Run argv to its end; its CPU comes from RUSAGE_CHILDREN, so nothing else may run
    child processes meanwhile (the benchmarks are single-threaded)."""
    cpu, started = children_cpu(), time.perf_counter()
    done = subprocess.run(list(argv), env=env, input=stdin, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return ProcessRun(seconds, children_cpu() - cpu, done.stdout)


def batchpool_run(n: int, config: Path, home: Path, pool: str = "dev") -> ProcessRun:
    """`batchpool run` of an n-task `true` array on `pool`, in a fresh BATCHPOOL_HOME."""
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    spec = home / "noop.toml"
    spec.write_text(SPEC.format(last=n - 1))
    env = {**os.environ, "BATCHPOOL_HOME": str(home)}
    env.pop("BATCHPOOL_CONFIG", None)
    run = timed_process([*batchpool_command(), "run", str(spec), "--pool", pool,
                         "--config", str(config), "--json"], env)
    result = json.loads(run.stdout)
    if result["succeeded"] != n:
        raise RuntimeError(f"batchpool: {result['succeeded']} of {n} tasks succeeded: "
                           f"{result['failures'][:3]}")
    return run


def node_slots(home: Path, pool: str = "dev") -> list[int]:
    """The slots each node of the last run in `home` had (what the agents reported)."""
    env = {**os.environ, "BATCHPOOL_HOME": str(home)}
    out = subprocess.run([*batchpool_command(), "node", "list", "--pool", pool, "--json"],
                         env=env, capture_output=True, text=True, check=True).stdout
    return [int(node["slots"]) for node in json.loads(out)]


def clear_workdirs(nodes: Sequence[DevNode]) -> None:
    """Empty the nodes' work directories so every run starts from the same state."""
    for node in nodes:
        shutil.rmtree(node.workdir, ignore_errors=True)
        node.workdir.mkdir(parents=True)


# --- GNU Parallel ----------------------------------------------------------------------

def write_parallel_files(cluster: DevCluster, nodes: Sequence[DevNode],
                         tmp: Path) -> tuple[Path, Path, Path]:
    """(ssh config, sshloginfile, ssh wrapper) for GNU Parallel: one Host alias per node,
    strict host keys against the cluster's known_hosts, the cluster's client key."""
    lines: list[str] = []
    for node in nodes:
        lines += [f"Host {node.name}", f"    HostName {node.host}", f"    Port {node.port}"]
    lines += ["Host *", f"    User {getpass.getuser()}",
              f"    IdentityFile {cluster.client_key}", "    IdentitiesOnly yes",
              f"    UserKnownHostsFile {cluster.known_hosts}",
              "    GlobalKnownHostsFile /dev/null", "    StrictHostKeyChecking yes",
              "    BatchMode yes", "    LogLevel ERROR", ""]
    config = tmp / "ssh_config"
    config.write_text("\n".join(lines))
    logins = tmp / "sshloginfile"
    logins.write_text("".join(f"{node.name}\n" for node in nodes))
    wrapper = tmp / "ssh-wrapper.sh"  # a copy: the checkout may have lost the exec bit
    shutil.copyfile(BASELINES / "ssh-wrapper.sh", wrapper)
    wrapper.chmod(0o755)
    return config, logins, wrapper


def parallel_run(files: tuple[Path, Path, Path], slots: int, n: int, tmp: Path) -> ProcessRun:
    """GNU Parallel running `true` n times on the nodes, at its fastest setting."""
    config, logins, wrapper = files
    home = tmp / "parallel-home"  # keeps ~/.parallel untouched
    home.mkdir(exist_ok=True)
    env = {**os.environ, "BATCHPOOL_BENCH_SSH_CONFIG": str(config),
           "PARALLEL_HOME": str(home)}
    return timed_process(["parallel", "--will-cite", "--sshloginfile", str(logins),
                          "--controlmaster", "--ssh", str(wrapper), "-j", str(slots),
                          "--halt", "now,fail=1", "-N0", "true"],
                         env, stdin="".join(f"{i}\n" for i in range(n)))


# --- diagnostics -----------------------------------------------------------------------

def login_shell_seconds(samples: int = 10) -> float | None:
    """Seconds for the login shell to run `true` the way sshd starts it for every exec
    channel (bash reads ~/.bashrc when SSH_CLIENT is set); None for another shell."""
    shell = pwd.getpwuid(os.getuid()).pw_shell
    if not shell.endswith("bash"):
        return None
    env = {k: v for k, v in os.environ.items() if k != "SHLVL"}
    env["SSH_CLIENT"] = "127.0.0.1 1 22"
    started = time.perf_counter()
    for _ in range(samples):
        subprocess.run([shell, "-c", "true"], env=env, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - started) / samples


# --- the benchmark ---------------------------------------------------------------------

@dataclass
class Series:
    """Every sample of one method: tasks/s and client CPU seconds per task."""

    tasks: int
    rates: list[float] = field(default_factory=list)
    cpu_per_task: list[float] = field(default_factory=list)

    def add(self, seconds: float, cpu_seconds: float) -> None:
        self.rates.append(self.tasks / seconds)
        self.cpu_per_task.append(cpu_seconds / self.tasks)

    @property
    def best(self) -> float:
        return max(self.rates)

    def spread(self) -> str:
        if len(self.rates) < 2:
            return "1 run"
        low, high = min(self.rates), max(self.rates)
        return f"{len(self.rates)} runs: {low:.1f}-{high:.1f} ({(high - low) / high:.0%})"

    def to_json(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "rates": self.rates, "best": self.best,
                "cpu_per_task_us": [c * 1e6 for c in self.cpu_per_task]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=2000,
                        help="tasks for batchpool and the minimal worker")
    parser.add_argument("--parallel-tasks", type=int, default=300)
    parser.add_argument("--exec-tasks", type=int, default=500,
                        help="tasks for the exec-channel baseline (about 10/s here)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds, methods alternating")
    parser.add_argument("--only", nargs="*", choices=["batchpool", *TARGETS],
                        help="measure only these methods")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (debugging)")
    args = parser.parse_args()
    wanted = set(args.only or ["batchpool", *TARGETS])
    series = {"batchpool": Series(args.tasks), "parallel": Series(args.parallel_tasks),
              "exec channel": Series(args.exec_tasks),
              "minimal worker": Series(args.tasks)}
    fixed: list[float] = []        # wall seconds of a 1-task batchpool run
    marginal: list[float] = []     # batchpool CPU per task beyond a 1-task run
    steady: list[float] = []       # batchpool tasks/s beyond a 1-task run (no start-up)

    with dev_cluster(args.nodes, "bench-ssh-noop-", args.keep) as (cluster, tmp):
        nodes = running_nodes(cluster)
        targets = [Node(n.host, n.port, getpass.getuser(), cluster.client_key,
                        cluster.known_hosts) for n in nodes]
        home = tmp / "home"
        batchpool_run(1, cluster.config_file, home)  # warm-up: page cache, .pyc files
        wait_quiet(tmp, cluster)
        # nodes still connecting when the 1-task job ended report 0 slots
        slot_counts = {n for n in node_slots(home) if n}
        if len(slot_counts) != 1:
            raise RuntimeError(f"nodes have different slot counts: {slot_counts}")
        slots = slot_counts.pop()
        files = write_parallel_files(cluster, nodes, tmp)
        shell = login_shell_seconds()
        print(f"# {len(nodes)} dev-cluster nodes on loopback, {slots} slots each "
              f"({len(nodes) * slots} tasks at once), {os.cpu_count()} CPUs; "
              f"{args.repeat} round(s); batchpool from {Path(batchpool.__file__).parent}",
              flush=True)
        for round_ in range(args.repeat):
            if "batchpool" in wanted:
                clear_workdirs(nodes)
                one = batchpool_run(1, cluster.config_file, home)
                wait_quiet(tmp, cluster)  # agents still starting when that run ended
                clear_workdirs(nodes)
                run = batchpool_run(args.tasks, cluster.config_file, home)
                wait_quiet(tmp, cluster)
                series["batchpool"].add(run.seconds, run.cpu_seconds)
                fixed.append(one.seconds)
                marginal.append((run.cpu_seconds - one.cpu_seconds) / (args.tasks - 1))
                steady.append((args.tasks - 1) / max(run.seconds - one.seconds, 1e-9))
            if "parallel" in wanted:
                run = parallel_run(files, slots, args.parallel_tasks, tmp)
                series["parallel"].add(run.seconds, run.cpu_seconds)
            if "exec channel" in wanted:
                timing = asyncio.run(exec_channels(targets, slots, args.exec_tasks))
                series["exec channel"].add(timing.seconds, timing.cpu_seconds)
            if "minimal worker" in wanted:
                timing = asyncio.run(persistent_workers(targets, slots, args.tasks))
                series["minimal worker"].add(timing.seconds, timing.cpu_seconds)
            done = ", ".join(f"{name} {s.rates[-1]:.1f}" for name, s in series.items()
                             if s.rates)
            print(f"# round {round_ + 1}: {done} tasks/s", flush=True)

    print(f"# best of {args.repeat}; CPU = this machine's client side per task "
          "(batchpool: the controller process)")
    for name, s in series.items():
        if s.rates:
            report(f"{name} ({s.tasks} tasks)", s.best, "tasks/s", s.spread())
    ours = series["batchpool"]
    if ours.rates:
        report("batchpool 1-task run (start-up, connect, exit)", min(fixed), "s")
        report("batchpool controller CPU per task (whole run)",
               min(ours.cpu_per_task) * 1e6, "us")
        report("batchpool controller CPU per task (beyond 1 task)", min(marginal) * 1e6, "us")
        report("batchpool tasks/s beyond the 1-task run", max(steady), "tasks/s",
               "start-up excluded, as the baselines exclude theirs")
    for name in ("exec channel", "minimal worker", "parallel"):
        if series[name].rates:
            report(f"{name} client CPU per task", min(series[name].cpu_per_task) * 1e6, "us")
    if shell is not None:
        report("login shell start-up (bash -c true + ~/.bashrc)", shell * 1e3, "ms",
               "paid per task by exec channel and parallel")
    ratios: dict[str, dict[str, Any]] = {}
    for name, target in TARGETS.items():
        theirs = series[name]
        if not (ours.rates and theirs.rates):
            continue
        ratio = ours.best / theirs.best
        rounds = [a / b for a, b in zip(ours.rates, theirs.rates, strict=False)]
        ratios[name] = {"ratio": ratio, "per_round": rounds, "target": target,
                        "met": ratio >= target}
        report(f"ratio batchpool / {name}", ratio, "x",
               f"target >= {target:g}: {'met' if ratio >= target else 'MISSED'}; per round "
               + ", ".join(f"{r:.2f}" for r in rounds))
    worker = series["minimal worker"]
    if steady and worker.rates:
        ratio = max(steady) / worker.best
        ratios["minimal worker, steady state"] = {"ratio": ratio, "target": 0.85,
                                                  "met": ratio >= 0.85}
        report("ratio batchpool beyond 1 task / minimal worker", ratio, "x",
               f"target >= 0.85: {'met' if ratio >= 0.85 else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({
            "batchpool": str(Path(batchpool.__file__).parent),
            "nodes": len(nodes), "slots_per_node": slots, "cpus": os.cpu_count(),
            "repeat": args.repeat,
            "series": {name: s.to_json() for name, s in series.items() if s.rates},
            "batchpool_one_task_seconds": fixed,
            "batchpool_marginal_cpu_per_task_us": [m * 1e6 for m in marginal],
            "batchpool_steady_tasks_per_second": steady,
            "login_shell_seconds": shell, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the cluster is already down: no traceback
        sys.exit("interrupted")
