"""`batchpool run` on an SSH pool of real OpenSSH sshd nodes (the dev cluster), end to end.

These tests kill no node, so they share the session's 3-node dev cluster (see
conftest.py); each test writes its own batchpool.toml for it, with node work
directories under its own tmp_path (no state is shared between tests), and a
finalizer kills, by pid, anything still running there when the test ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Batchpool, dev_pool_config, wait_for, write

from batchpool.devcluster import DevCluster, DevNode, node_dir_name, pid_alive
from batchpool.store import Store

pytestmark = pytest.mark.ssh

ROOT = Path(__file__).resolve().parents[2]


# --- helpers -----------------------------------------------------------------------------

def _workdir(tmp_path: Path, node: DevNode | str) -> Path:
    address = node if isinstance(node, str) else node.address
    return tmp_path / "nodes" / node_dir_name(address)


def _run(bp: Batchpool, spec: Path, config: Path, *args: str,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return bp("run", str(spec), "--pool", "dev", "--config", str(config),
              "--retry-backoff", "0.1", *args, timeout=timeout)


def _check(result: subprocess.CompletedProcess[str], status: int = 0) -> None:
    assert result.returncode == status, (
        f"exit {result.returncode}, wanted {status}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}")


def _nodes(bp: Batchpool) -> dict[str, dict[str, object]]:
    return {n["name"]: n for n in bp.json("node", "list", "--pool", "dev")}


def _attempt_nodes(bp: Batchpool, group: str | None = None) -> dict[str, str]:
    """task id -> node of its succeeded attempt."""
    return {a.task_id: a.node for a in Store(bp.home / "batchpool.db").attempts(1)
            if a.state == "succeeded" and (group is None or a.task_id.startswith(group))}


def _ran_on_the_rest(bp: Batchpool, nodes: list[DevNode], bad: str) -> None:
    """Every task succeeded, none on `bad`, and the other nodes shared the work."""
    report = bp.json("job", "show", "1")
    assert report["state"] == "succeeded", report
    used = set(_attempt_nodes(bp).values())
    good = {n.address for n in nodes} - {bad}
    assert used <= good, used
    assert len(used) > 1, f"only {used} took tasks"
    rows = _nodes(bp)
    for name in good:  # they were ready, then released when the run ended
        assert rows[name]["state"] == "offline", rows[name]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_under(root: Path) -> list[int]:
    """Live processes other than this one whose cwd or command line is under `root`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if (cwd.startswith(str(root)) or str(root) in cmd) and pid_alive(pid):
            found.append(pid)
    return found


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    """After each test: nothing it started (agents, tasks, CLI runs) may keep running.

    A leftover is killed by pid (so later tests are not disturbed) and fails the test.
    """
    yield
    deadline = time.monotonic() + 5  # a finished run's agents exit as their channel closes
    left = _processes_under(tmp_path)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _processes_under(tmp_path)
    described = [(p, Path(f"/proc/{p}/cmdline").read_bytes()[:120]) for p in left
                 if Path(f"/proc/{p}/cmdline").exists()]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {described}"


# --- map/reduce --------------------------------------------------------------------------

@pytest.mark.slow
def test_montecarlo_pi_map_reduce(bp: Batchpool, tmp_path: Path, dev_cluster: DevCluster,
                                  dev_nodes: list[DevNode]) -> None:
    source = ROOT / "jobs" / "montecarlo-pi"
    spec = write(tmp_path / "pi" / "job.toml", (source / "job.toml").read_text()
                 .replace("0-63", "0-11").replace("2000000", "200000"))
    (tmp_path / "pi" / "pi.py").write_text((source / "pi.py").read_text())
    config = dev_pool_config(dev_cluster, tmp_path)
    _check(_run(bp, spec, config))

    report = bp.json("job", "show", "1")
    assert report["state"] == "succeeded" and report["succeeded"] == 13, report
    out = tmp_path / "out"
    bp("job", "outputs", "1", "--dest", str(out), check=True)
    pi = json.loads((out / "reduce" / "pi.json").read_text())
    assert pi["shards"] == 12 and pi["samples"] == 12 * 200_000
    assert abs(pi["pi"] - math.pi) < 5 * pi["stderr"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["reduce", *(f"map[{i}]" for i in range(12))])
    logs = bp("job", "logs", "1", "reduce", "--stdout", check=True)
    assert logs.stdout.startswith("pi = 3.1")

    nodes = _attempt_nodes(bp, "map")
    assert len(nodes) == 12
    assert len(set(nodes.values())) > 1, f"every map task ran on one node: {nodes}"
    assert set(nodes.values()) <= {n.address for n in dev_nodes}


def test_outputs_staged_to_reduce_on_another_node(bp: Batchpool, tmp_path: Path,
                                                  dev_cluster: DevCluster,
                                                  dev_nodes: list[DevNode]) -> None:
    spec = write(tmp_path / "job.toml", """
name = "staging"
[[tasks]]
id = "map"
array = "0-8"
command = "echo {index} $BATCHPOOL_NODE > part.txt; sleep 0.5"
outputs = ["part.txt"]
[[tasks]]
id = "reduce"
depends_on = ["map"]
command = "cd \\"$BATCHPOOL_INPUTS_DIR\\" && find -L . -type f | sort && echo --- && cat */part.txt"
""")
    _check(_run(bp, spec, dev_pool_config(dev_cluster, tmp_path)))
    maps = _attempt_nodes(bp, "map")
    reduce_node = _attempt_nodes(bp, "reduce")["reduce"]
    assert len(set(maps.values())) > 1, maps
    assert any(node != reduce_node for node in maps.values()), (reduce_node, maps)

    stdout = bp("job", "logs", "1", "reduce", "--stdout", check=True).stdout
    listing, _, contents = stdout.partition("---\n")
    assert listing.split() == sorted(f"./map[{i}]/part.txt" for i in range(9)), stdout
    # each file is the one its map task wrote, on its own node
    assert sorted(contents.split("\n")[:-1]) == sorted(
        f"{i} {maps[f'map[{i}]']}" for i in range(9)), stdout
    # and the files really travelled: staged into the reduce's node workdir
    inputs = _workdir(tmp_path, reduce_node) / "1" / "reduce" / "1" / "inputs"
    assert sorted(p.parent.name for p in inputs.glob("*/part.txt")) == sorted(
        f"map[{i}]" for i in range(9))


def test_resource_files_are_staged(bp: Batchpool, tmp_path: Path, dev_cluster: DevCluster,
                                   dev_nodes: list[DevNode]) -> None:
    write(tmp_path / "job" / "tool.sh", 'printf "tool ran for %s\\n" "$1" > result.txt\n')
    spec = write(tmp_path / "job" / "job.toml", """
name = "files"
files = ["tool.sh"]
[[tasks]]
id = "use"
array = "0-8"
command = "sh tool.sh {index} && sleep 0.5"
outputs = ["result.txt"]
""")
    _check(_run(bp, spec, dev_pool_config(dev_cluster, tmp_path)))
    out = tmp_path / "out"
    bp("job", "outputs", "1", "--dest", str(out), check=True)
    for i in range(9):
        assert (out / f"use[{i}]" / "result.txt").read_text() == f"tool ran for {i}\n"
    used = set(_attempt_nodes(bp).values())
    assert len(used) > 1
    for node in used:  # uploaded into each node's own workdir (no shared filesystem)
        staged = list((_workdir(tmp_path, node) / "files").glob("*/tool.sh"))
        assert len(staged) == 1, (node, staged)


def test_shell_metacharacters_reach_the_program_literally(
        bp: Batchpool, tmp_path: Path, dev_cluster: DevCluster,
        dev_nodes: list[DevNode]) -> None:
    pwned = tmp_path / "pwned"
    values = [f"x; touch {pwned}", f"$(touch {pwned})", f"`touch {pwned}`",
              f"a b 'c' \"d\" && touch {pwned} | cat", "$HOME * ? ~ \\n \\\\", "--help",
              "line1\nline2", "ünïcødé €"]
    spec = write(tmp_path / "job.toml", f"""
name = "quoting"
[[tasks]]
id = "echo"
command = "printf '%s' {{v}} > out.txt"
params = {{ v = {json.dumps(values)} }}
outputs = ["out.txt"]
""")
    _check(_run(bp, spec, dev_pool_config(dev_cluster, tmp_path)))
    assert not pwned.exists()
    assert not list(tmp_path.glob("nodes/*/**/pwned"))
    out = tmp_path / "o"
    bp("job", "outputs", "1", "--dest", str(out), check=True)
    got = sorted((out / f"echo[{i}]" / "out.txt").read_bytes().decode()
                 for i in range(len(values)))
    assert got == sorted(values)


# --- start tasks ---------------------------------------------------------------------------

def test_start_task_runs_once_per_node_before_tasks(bp: Batchpool, tmp_path: Path,
                                                    dev_cluster: DevCluster,
                                                    dev_nodes: list[DevNode]) -> None:
    spec = write(tmp_path / "job.toml", """
name = "after-start"
[[tasks]]
id = "check"
array = "0-11"
command = "wc -l < ../../../started.txt > seen.txt; sleep 0.5"
outputs = ["seen.txt"]
""")
    config = dev_pool_config(dev_cluster, tmp_path, start_task="echo $$ >> started.txt")
    _check(_run(bp, spec, config))
    for node in dev_nodes:
        marker = _workdir(tmp_path, node) / "started.txt"
        assert marker.is_file(), f"no start task marker on {node.address}"
        assert len(marker.read_text().split()) == 1, f"start task ran twice on {node.address}"
    out = tmp_path / "out"
    bp("job", "outputs", "1", "--dest", str(out), check=True)
    for i in range(12):  # every task found its node's marker already written
        assert (out / f"check[{i}]" / "seen.txt").read_text().strip() == "1"
    # a second job on the same nodes: a new controller, so the nodes join again
    _check(_run(bp, spec, config))
    for node in dev_nodes:
        assert len((_workdir(tmp_path, node) / "started.txt").read_text().split()) == 2


def test_failing_start_task_makes_the_node_unusable(bp: Batchpool, tmp_path: Path,
                                                    dev_cluster: DevCluster,
                                                    dev_nodes: list[DevNode]) -> None:
    bad = dev_nodes[1]
    start_task = (f'case "$PWD" in *_{bad.port}) echo "numpy: not installed here" >&2; '
                  'exit 3;; esac; touch ok')
    spec = write(tmp_path / "job.toml", """
name = "start-fails"
[[tasks]]
id = "work"
array = "0-11"
command = "sleep 0.5"
""")
    _check(_run(bp, spec, dev_pool_config(dev_cluster, tmp_path, start_task=start_task)))
    nodes = _nodes(bp)
    assert nodes[bad.address]["state"] == "unusable", nodes[bad.address]
    reason = str(nodes[bad.address]["reason"])
    assert "start task" in reason and "exit 3" in reason and "numpy: not installed" in reason
    _ran_on_the_rest(bp, dev_nodes, bad.address)
    assert bp.json("job", "show", "1")["succeeded"] == 12


# --- nodes that cannot be used -----------------------------------------------------------

@pytest.mark.slow
def test_no_python_on_any_node_fails_the_job_promptly(bp: Batchpool, tmp_path: Path,
                                                      dev_cluster: DevCluster,
                                                      dev_nodes: list[DevNode]) -> None:
    spec = write(tmp_path / "job.toml", 'name = "nopython"\n[[tasks]]\nid = "a"\n'
                                        'array = "0-3"\ncommand = "true"\n')
    started = time.monotonic()
    config = dev_pool_config(dev_cluster, tmp_path, python="/nonexistent")
    result = _run(bp, spec, config, timeout=60)
    elapsed = time.monotonic() - started
    _check(result, 1)
    assert elapsed < 30, f"took {elapsed:.1f}s to give up"
    report = bp.json("job", "show", "1")
    assert report["state"] == "failed", report
    assert "no usable node" in (report["reason"] or ""), report
    assert "/nonexistent" in report["reason"], report
    nodes = _nodes(bp)
    assert {n.address for n in dev_nodes} <= set(nodes)
    for node in dev_nodes:
        row = nodes[node.address]
        assert row["state"] == "unusable", row
        assert "/nonexistent" in str(row["reason"]), row


def test_wrong_host_key_makes_one_node_unusable(bp: Batchpool, tmp_path: Path,
                                                dev_cluster: DevCluster,
                                                dev_nodes: list[DevNode]) -> None:
    bad = dev_nodes[0]
    keygen = tmp_path / "imposter"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keygen)],
                   check=True)
    imposter = keygen.with_suffix(".pub").read_text().split()[1]
    lines = []
    for line in dev_cluster.known_hosts.read_text().splitlines():
        host, key_type, _ = line.split()[:3]
        lines.append(f"{host} {key_type} {imposter}" if host == f"[127.0.0.1]:{bad.port}"
                     else line)
    assert lines != dev_cluster.known_hosts.read_text().splitlines()
    known_hosts = write(tmp_path / "known_hosts", "\n".join(lines) + "\n")
    spec = write(tmp_path / "job.toml", 'name = "keys"\n[[tasks]]\nid = "a"\n'
                                        'array = "0-11"\ncommand = "sleep 0.5"\n')
    _check(_run(bp, spec, dev_pool_config(dev_cluster, tmp_path, known_hosts=str(known_hosts))))
    row = _nodes(bp)[bad.address]
    assert row["state"] == "unusable", row
    assert "host key" in str(row["reason"]).lower(), row
    _ran_on_the_rest(bp, dev_nodes, bad.address)
    assert known_hosts.read_text().splitlines() == lines  # strict: nothing recorded


def test_unreachable_node_is_unusable_and_the_job_runs_on_the_rest(
        bp: Batchpool, tmp_path: Path, dev_cluster: DevCluster,
        dev_nodes: list[DevNode]) -> None:
    closed = f"127.0.0.1:{_closed_port()}"
    hosts = [n.address for n in dev_nodes] + [closed]
    spec = write(tmp_path / "job.toml", 'name = "unreachable"\n[[tasks]]\nid = "a"\n'
                                        'array = "0-11"\ncommand = "sleep 0.5"\n')
    started = time.monotonic()
    _check(_run(bp, spec, dev_pool_config(dev_cluster, tmp_path, hosts=hosts)))
    assert time.monotonic() - started < 30
    row = _nodes(bp)[closed]
    assert row["state"] == "unusable", row
    assert "refused" in str(row["reason"]), row
    _ran_on_the_rest(bp, dev_nodes, closed)


# --- timeouts ------------------------------------------------------------------------------

def test_task_timeout_kills_the_task_over_ssh(bp: Batchpool, tmp_path: Path,
                                              dev_cluster: DevCluster,
                                              dev_nodes: list[DevNode]) -> None:
    pidfile = tmp_path / "child.pid"
    spec = write(tmp_path / "job.toml", f"""
name = "slow"
[[tasks]]
id = "slow"
max_attempts = 1
timeout = "1s"
command = "sleep 300 & echo $! > {pidfile}; wait"
""")
    started = time.monotonic()
    result = _run(bp, spec, dev_pool_config(dev_cluster, tmp_path), timeout=60)
    _check(result, 1)
    assert time.monotonic() - started < 30
    report = bp.json("job", "show", "1")
    assert report["failures"][0]["reason"].startswith("timed out"), report
    child = int(pidfile.read_text())
    wait_for(lambda: not pid_alive(child), timeout=5)
