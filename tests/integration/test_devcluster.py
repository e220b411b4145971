"""The dev cluster: real sshd nodes up, status, down (in this and in another process)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchpool.cli.devcluster import dev_cluster as dev_cluster_cli
from batchpool.devcluster import (
    DevCluster,
    DevClusterError,
    DevNode,
    descendants,
    find_sshd,
    is_node_sshd,
    pid_alive,
    to_toml,
)
from batchpool.transport.base import NodeAddress
from batchpool.transport.ssh import SshOptions, SshTransport

pytestmark = pytest.mark.ssh


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DevCluster]:
    """A fresh cluster root of its own (not the session cluster), always stopped."""
    try:
        find_sshd()
    except DevClusterError as exc:
        pytest.skip(f"needs OpenSSH sshd: {exc}")
    made = DevCluster(tmp_path / "dc")
    try:
        yield made
    finally:
        made.down()


def _sshd_listeners_under(root: Path) -> set[int]:
    """Live sshd processes started with a config under `root`, minus their children."""
    found: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ")
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if b"sshd" in cmd and str(root).encode() in cmd and pid_alive(int(entry.name)):
                found[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return {pid for pid, parent in found.items() if parent not in found}


def _wait_dead(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


def test_up_status_down(cluster: DevCluster) -> None:
    nodes = cluster.up(2)
    assert [n.name for n in nodes] == ["dev-0", "dev-1"]
    assert len({n.port for n in nodes}) == 2
    assert all(n.running and n.pid for n in nodes)
    pids = [n.pid for n in nodes if n.pid]
    assert _sshd_listeners_under(cluster.root) == set(pids)
    for node in nodes:
        assert is_node_sshd(pids[node.index], node.config_path)
        assert node.workdir.is_dir()
        assert node.workdir == cluster.root / "nodes" / f"127.0.0.1_{node.port}"
        assert (node.dir / "ssh_host_ed25519_key").exists()
        text = node.config_path.read_text()
        for needle in ("ListenAddress 127.0.0.1", f"Port {node.port}",
                       "PasswordAuthentication no", "Subsystem sftp internal-sftp"):
            assert needle in text

    # known_hosts holds every node's key as [127.0.0.1]:PORT
    lines = cluster.known_hosts.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [f"[127.0.0.1]:{n.port}" for n in nodes]

    # the state and the config
    state = json.loads(cluster.state_file.read_text())
    assert [n["pid"] for n in state["nodes"]] == pids
    config = tomllib.loads(cluster.config_file.read_text())
    pool = config["pools"]["dev"]
    assert config["default_pool"] == "dev"
    assert pool["provider"] == "static"
    assert pool["hosts"] == [f"127.0.0.1:{n.port}" for n in nodes]
    assert pool["host_key_policy"] == "strict"
    assert pool["known_hosts"] == str(cluster.known_hosts)
    assert pool["identity_file"] == str(cluster.client_key)
    assert pool["workdir"] == str(cluster.root / "nodes" / "{node}")
    assert pool == cluster.pool_config()

    # status from a fresh object (as another process would)
    status = DevCluster(cluster.root).status()
    assert [(n.name, n.port, n.pid, n.running) for n in status] == \
        [(n.name, n.port, n.pid, True) for n in nodes]

    # up again refuses while nodes run
    with pytest.raises(DevClusterError, match="already"):
        cluster.up(2)

    # the nodes serve SSH with the generated key and strict known_hosts
    asyncio.run(_echo_all(cluster, nodes))

    stopped = DevCluster(cluster.root).down()
    assert [n.pid for n in stopped] == pids
    assert _wait_dead(pids) == []
    assert _sshd_listeners_under(cluster.root) == set()
    assert DevCluster(cluster.root).status() == []
    assert DevCluster(cluster.root).down() == []  # nothing left: a no-op


async def _echo_all(cluster: DevCluster, nodes: list[DevNode]) -> None:
    transport = SshTransport(SshOptions(known_hosts=cluster.known_hosts,
                                        identity_file=cluster.client_key))

    async def one(node: DevNode) -> str:
        async with await transport.connect(NodeAddress(node.name, node.host, node.port)) as c:
            return (await c.run(f"echo {node.name}")).stdout.strip()

    assert await asyncio.gather(*(one(n) for n in nodes)) == [n.name for n in nodes]


async def _connect_all(cluster: DevCluster, nodes: list[DevNode]) -> float:
    transport = SshTransport(SshOptions(known_hosts=cluster.known_hosts,
                                        identity_file=cluster.client_key))
    started = time.monotonic()
    conns = await asyncio.gather(*(transport.connect(NodeAddress(n.name, n.host, n.port))
                                   for n in nodes))
    elapsed = time.monotonic() - started
    await asyncio.gather(*(c.close() for c in conns))
    return elapsed


def test_down_in_another_process_kills_sessions(cluster: DevCluster) -> None:
    nodes = cluster.up(2)
    node = nodes[0]
    assert node.pid is not None
    transport = SshTransport(SshOptions(known_hosts=cluster.known_hosts,
                                        identity_file=cluster.client_key))

    async def go() -> None:
        conn = await transport.connect(NodeAddress(node.name, node.host, node.port))
        agent = await conn.start_agent("sleep 300 & echo $!; wait")
        sleeper = int(await agent.readline())
        tree = descendants(node.pid or 0)
        assert sleeper in tree
        # the connection stays open: down (in another process) must kill the session
        result = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "batchpool.cli.devcluster", "--root", str(cluster.root),
            "down"], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert "stopped 2 node(s)" in result.stdout
        assert _wait_dead([n.pid for n in nodes if n.pid] + tree) == []
        assert await agent.readline() == b""
        await conn.close()

    asyncio.run(go())


def test_down_leaves_reused_pids_alone(cluster: DevCluster) -> None:
    nodes = cluster.up(1)
    # pretend the recorded pid now belongs to an unrelated process
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        state = json.loads(cluster.state_file.read_text())
        real_pid = state["nodes"][0]["pid"]
        state["nodes"][0]["pid"] = bystander.pid
        cluster.state_file.write_text(json.dumps(state))
        status = cluster.status()
        assert status[0].running is False
        cluster.down()
        assert bystander.poll() is None, "down killed a process it did not start"
        # the real sshd is stopped by hand (it is no longer recorded)
        assert is_node_sshd(real_pid, nodes[0].config_path)
        os.kill(real_pid, signal.SIGTERM)
        assert _wait_dead([real_pid]) == []
    finally:
        bystander.kill()
        bystander.wait()


def test_stale_state_is_replaced(cluster: DevCluster) -> None:
    first = cluster.up(1)
    assert first[0].pid is not None
    os.kill(first[0].pid, signal.SIGKILL)
    assert _wait_dead([first[0].pid]) == []
    assert [n.running for n in cluster.status()] == [False]
    second = cluster.up(2)
    assert all(n.running for n in second)
    assert len(cluster.status()) == 2


def test_up_needs_a_positive_count(cluster: DevCluster) -> None:
    with pytest.raises(DevClusterError, match="at least 1"):
        cluster.up(0)


def test_cli(cluster: DevCluster) -> None:
    runner = CliRunner()
    root = str(cluster.root)

    help_text = runner.invoke(dev_cluster_cli, ["--help"]).output
    assert "up" in help_text and "down" in help_text and "status" in help_text
    assert "BATCHPOOL_DEV_CLUSTER" in runner.invoke(dev_cluster_cli, ["up", "--help"]).output

    empty = runner.invoke(dev_cluster_cli, ["--root", root, "status"])
    assert empty.exit_code == 0 and "no dev cluster" in empty.output

    up = runner.invoke(dev_cluster_cli, ["--root", root, "up", "2"])
    assert up.exit_code == 0, up.output
    assert "dev-0" in up.output and "dev-1" in up.output
    assert str(cluster.config_file) in up.output
    assert f"batchpool run SPEC --pool dev --config {cluster.config_file}" in up.output

    again = runner.invoke(dev_cluster_cli, ["up", "2"], env={"BATCHPOOL_DEV_CLUSTER": root})
    assert again.exit_code == 1 and "already" in again.output

    status = runner.invoke(dev_cluster_cli, ["status", "--json"],
                           env={"BATCHPOOL_DEV_CLUSTER": root})
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    assert [n["running"] for n in data["nodes"]] == [True, True]
    assert data["nodes"][0]["address"].startswith("127.0.0.1:")

    human = runner.invoke(dev_cluster_cli, ["status", "--root", root])
    assert "2 of 2 node(s) running" in human.output

    down = runner.invoke(dev_cluster_cli, ["down", "--root", root, "--json"])
    assert down.exit_code == 0, down.output
    pids = [n["pid"] for n in json.loads(down.output)["stopped"]]
    assert len(pids) == 2 and _wait_dead(pids) == []

    up_json = runner.invoke(dev_cluster_cli, ["--root", root, "up", "1", "--json"])
    assert up_json.exit_code == 0, up_json.output
    assert json.loads(up_json.output)["config"] == str(cluster.config_file)


def test_toml_writer_round_trips() -> None:
    text = to_toml({"default_pool": "dev"},
                   {"pools.dev": {"hosts": ["a:1", 'q"uote\\ü\n'], "n": 3, "on": True}},
                   header="line one\n\nline three")
    assert tomllib.loads(text) == {"default_pool": "dev", "pools": {"dev": {
        "hosts": ["a:1", 'q"uote\\ü\n'], "n": 3, "on": True}}}


@pytest.mark.slow
def test_fifty_nodes(cluster: DevCluster) -> None:
    started = time.monotonic()
    nodes = cluster.up(50)
    up_seconds = time.monotonic() - started
    assert len(nodes) == 50 and all(n.running for n in nodes)
    assert len({n.port for n in nodes}) == 50

    connect_seconds = asyncio.run(_connect_all(cluster, nodes))
    started = time.monotonic()
    asyncio.run(_echo_all(cluster, nodes))
    echo_seconds = time.monotonic() - started

    pids = [n.pid for n in nodes if n.pid]
    started = time.monotonic()
    cluster.down()
    down_seconds = time.monotonic() - started
    assert _wait_dead(pids) == []
    print(f"\n50 nodes: up {up_seconds:.2f}s, connect to all (concurrently) "
          f"{connect_seconds:.2f}s, connect+echo on all {echo_seconds:.2f}s, "
          f"down {down_seconds:.2f}s")
    assert up_seconds < 30
