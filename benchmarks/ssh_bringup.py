"""Bringing up a 50-node dev cluster, and batchpool connecting to all of it.

    python3 benchmarks/ssh_bringup.py [--nodes 50] [--repeat 3] [--json FILE]

In one run, under a private /tmp/bench-ssh-bringup-* directory (always stopped and
removed at the end):

  up             DevCluster.up(50): host keys, 50 sshd daemons, all listening;
  agents ready   batchpool's own node sessions (the code path the controller takes:
                 plan_pool + NodeSession.start, all nodes at once) until every node
                 is idle: SSH connect, host key check, login, agent sent and started,
                 `hello` received. Measured in this process, imports excluded;
  raw asyncssh   the floor: connect to every node and run `true` once on each (one
                 login shell per node, as the agent start needs), same process;
  batchpool run  `batchpool run` of 50 `true` tasks with slots_per_node = 1, as a
                 whole process, against the same run on one node of the cluster;
  down           DevCluster.down(): every sshd and its sessions stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from baselines.asyncssh_baselines import Node, connect
from common import report, self_cpu
from ssh_noop import batchpool_run, dev_cluster, running_nodes, wait_quiet

from batchpool.config import PoolConfig
from batchpool.devcluster import POOL_NAME, DevCluster, DevNode, to_toml
from batchpool.pool.providers import plan_pool
from batchpool.pool.session import NodeSession


def write_pool(cluster: DevCluster, nodes: list[DevNode], path: Path) -> Path:
    """A config whose pool "dev" is `nodes` with one slot each."""
    table = {**cluster.pool_config(nodes), "slots_per_node": 1}
    path.write_text(to_toml({"default_pool": POOL_NAME}, {f"pools.{POOL_NAME}": table}))
    return path


async def sessions_ready(pool: PoolConfig) -> tuple[float, list[float], float]:
    """(seconds until every node is idle, each node's seconds, seconds to close them)."""
    transport, plans = plan_pool(pool)
    lost: list[str] = []
    sessions = [NodeSession(plan.address, transport, plan.settings,
                            on_message=lambda node, message: None,
                            on_lost=lambda node, reason: lost.append(f"{node.name}: {reason}"))
                for plan in plans]
    each: list[float] = []
    started = time.perf_counter()

    async def bring_up(session: NodeSession) -> None:
        await session.start(connect_timeout=60.0)
        each.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(bring_up(s) for s in sessions))
        seconds = time.perf_counter() - started
        unusable = [f"{s.name}: {s.state} ({s.reason})" for s in sessions if not s.ready]
        if unusable or lost:
            raise RuntimeError("nodes not ready: " + "; ".join(unusable + lost))
    finally:
        closing = time.perf_counter()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    return seconds, sorted(each), time.perf_counter() - closing


async def raw_ready(nodes: list[Node]) -> float:
    """Seconds to connect to every node and run `true` once on each, all at once."""
    started = time.perf_counter()

    async def one(node: Node) -> None:
        async with await connect(node) as conn:
            await conn.run("true", check=True)

    await asyncio.gather(*(one(node) for node in nodes))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of the connect and run measurements")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results: dict[str, Any] = {"nodes": args.nodes}
    for key in ("ready", "ready_cpu", "node_median", "close", "raw", "raw_cpu", "run_all",
                "after_run_all", "run_one"):
        results[key] = []
    started = time.perf_counter()
    with dev_cluster(args.nodes, "bench-ssh-bringup-") as (cluster, tmp):
        results["up"] = time.perf_counter() - started
        nodes = running_nodes(cluster)
        if len(nodes) != args.nodes:
            raise RuntimeError(f"{len(nodes)} of {args.nodes} nodes are running")
        every = write_pool(cluster, nodes, tmp / "all.toml")
        first = write_pool(cluster, nodes[:1], tmp / "one.toml")
        pool = PoolConfig(name=POOL_NAME, **{**cluster.pool_config(nodes), "slots_per_node": 1})
        raw = [Node(n.host, n.port, getpass.getuser(), cluster.client_key,
                    cluster.known_hosts) for n in nodes]
        batchpool_run(1, first, tmp / "home")  # warm-up: page cache, .pyc files
        # between measurements, wait_quiet: node processes orphaned by a closed
        # connection (an agent still starting) would otherwise slow the next one
        for _ in range(args.repeat):
            wait_quiet(tmp, cluster)
            cpu = self_cpu()
            results["raw"].append(asyncio.run(raw_ready(raw)))
            results["raw_cpu"].append(self_cpu() - cpu)
            wait_quiet(tmp, cluster)
            cpu = self_cpu()
            ready, each, close = asyncio.run(sessions_ready(pool))
            results["ready_cpu"].append(self_cpu() - cpu)
            results["ready"].append(ready)
            results["node_median"].append(statistics.median(each))
            results["close"].append(close)
            wait_quiet(tmp, cluster)
            results["run_all"].append(batchpool_run(args.nodes, every, tmp / "home").seconds)
            results["after_run_all"].append(wait_quiet(tmp, cluster))
            results["run_one"].append(batchpool_run(1, first, tmp / "home").seconds)
        stopping = time.perf_counter()
        cluster.down()
        results["down"] = time.perf_counter() - stopping

    def spread(values: list[float]) -> str:
        return f"{len(values)} runs: {min(values):.2f}-{max(values):.2f} s"

    print(f"# {args.nodes} dev-cluster nodes on loopback; best of {args.repeat} where repeated")
    report(f"DevCluster.up({args.nodes})", results["up"], "s")
    report(f"batchpool sessions: all {args.nodes} agents ready", min(results["ready"]), "s",
           spread(results["ready"]))
    report("  CPU of this process (connect, start, close)", min(results["ready_cpu"]), "s")
    report("  median node ready after", min(results["node_median"]), "s")
    report(f"  closing all {args.nodes} sessions", min(results["close"]), "s")
    report(f"raw asyncssh: connect + `true` on all {args.nodes}", min(results["raw"]), "s",
           spread(results["raw"]))
    report("  CPU of this process", min(results["raw_cpu"]), "s")
    report(f"batchpool run, {args.nodes} tasks on {args.nodes} nodes", min(results["run_all"]),
           "s", spread(results["run_all"]))
    report("  node processes still running after it", max(results["after_run_all"]), "s",
           "(orphaned agents that were still starting)")
    report("batchpool run, 1 task on 1 node", min(results["run_one"]), "s",
           spread(results["run_one"]))
    report(f"DevCluster.down() of {args.nodes}", results["down"], "s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the cluster is already down: no traceback
        sys.exit("interrupted")
