"""`batchpool dev-cluster up N | down | status`: real sshd nodes on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from batchpool.devcluster import POOL_NAME, DevCluster, DevNode, default_root
from batchpool.errors import BatchpoolError

_F = TypeVar("_F", bound=Callable[..., Any])

ROOT_HELP = ("Directory of the dev cluster (keys, sshd configs, state, config file). "
             "Default: $BATCHPOOL_HOME/dev-cluster.")


def _root_option(func: _F) -> _F:
    return click.option(
        "--root", "root", type=click.Path(file_okay=False, path_type=Path),
        envvar="BATCHPOOL_DEV_CLUSTER", show_envvar=True, default=None, help=ROOT_HELP,
    )(func)


def _cluster(ctx: click.Context, root: Path | None) -> DevCluster:
    chosen = root or (ctx.obj or {}).get("dev_cluster_root")
    return DevCluster(chosen or default_root())


def _table(nodes: Sequence[DevNode]) -> str:
    rows = [("NODE", "ADDRESS", "PID", "STATE", "WORKDIR")]
    rows += [(n.name, n.address, str(n.pid or "-"), "running" if n.running else "stopped",
              str(n.workdir)) for n in nodes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _fail(exc: BatchpoolError) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group("dev-cluster")
@_root_option
@click.pass_context
def dev_cluster(ctx: click.Context, root: Path | None) -> None:
    """Run N real OpenSSH sshd nodes on this machine, plus a pool "dev" for them.

    Each node is its own sshd on 127.0.0.1 with its own port, host key and work
    directory; one generated client key logs in to all of them and a strict
    known_hosts file holds their host keys. Use it to try the SSH path (and to
    test against real sshd) without any remote machine.

    \b
      batchpool dev-cluster up 4
      batchpool run SPEC --pool dev --config $BATCHPOOL_HOME/dev-cluster/batchpool.toml
      batchpool dev-cluster down

    Needs OpenSSH's sshd (Debian: apt-get install openssh-server).
    """
    ctx.ensure_object(dict)
    ctx.obj["dev_cluster_root"] = root


@dev_cluster.command("up")
@click.argument("n", type=click.IntRange(min=1, max=1000), metavar="N")
@_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the nodes and paths as JSON.")
@click.pass_context
def up(ctx: click.Context, n: int, root: Path | None, as_json: bool) -> None:
    """Start N sshd nodes and write a config with the pool "dev".

    Refuses if this cluster's nodes are still running (run `down` first).
    """
    cluster = _cluster(ctx, root)
    started = time.monotonic()
    try:
        nodes = cluster.up(n)
    except BatchpoolError as exc:
        raise _fail(exc) from exc
    elapsed = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({
            "root": str(cluster.root), "config": str(cluster.config_file),
            "pool": POOL_NAME, "known_hosts": str(cluster.known_hosts),
            "identity_file": str(cluster.client_key), "seconds": round(elapsed, 3),
            "nodes": [node.to_json() for node in nodes]}, indent=2))
        return
    click.echo(f"started {len(nodes)} node(s) in {elapsed:.1f}s under {cluster.root}\n")
    click.echo(_table(nodes))
    click.echo(f"\nconfig written: {cluster.config_file} (pool \"{POOL_NAME}\")")
    click.echo(f"use it:  batchpool run SPEC --pool {POOL_NAME} --config {cluster.config_file}")
    click.echo(f"ssh in:  ssh -i {cluster.client_key} -o UserKnownHostsFile={cluster.known_hosts}"
               f" -p {nodes[0].port} {nodes[0].host}")
    click.echo("stop:    batchpool dev-cluster down" + _root_hint(cluster, root, ctx))


def _root_hint(cluster: DevCluster, root: Path | None, ctx: click.Context) -> str:
    explicit = root or (ctx.obj or {}).get("dev_cluster_root")
    return f" --root {cluster.root}" if explicit else ""


@dev_cluster.command("down", short_help="Stop every node: each sshd and the sessions under it.")
@_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the stopped nodes as JSON.")
@click.pass_context
def down(ctx: click.Context, root: Path | None, as_json: bool) -> None:
    """Stop every node of the cluster: each sshd and the sessions under it.

    Only the processes recorded by `up` are stopped. Keys, configs and the
    nodes' work directories stay, so outputs can still be read.
    """
    cluster = _cluster(ctx, root)
    try:
        nodes = cluster.down()
    except BatchpoolError as exc:
        raise _fail(exc) from exc
    stopped = [node for node in nodes if node.running]
    if as_json:
        click.echo(json.dumps({"root": str(cluster.root),
                               "stopped": [node.to_json() for node in stopped]}, indent=2))
        return
    if not nodes:
        click.echo(f"no dev cluster recorded at {cluster.root}; nothing to stop")
        return
    click.echo(f"stopped {len(stopped)} node(s) under {cluster.root}"
               + (f" ({len(nodes) - len(stopped)} were already stopped)"
                  if len(stopped) < len(nodes) else ""))


@dev_cluster.command("status")
@_root_option
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON.")
@click.pass_context
def status(ctx: click.Context, root: Path | None, as_json: bool) -> None:
    """Show the cluster's nodes and whether each sshd is running.

    Exits with status 1 when a recorded node is not running.
    """
    cluster = _cluster(ctx, root)
    try:
        nodes = cluster.status()
    except BatchpoolError as exc:
        raise _fail(exc) from exc
    if as_json:
        click.echo(json.dumps({"root": str(cluster.root), "config": str(cluster.config_file),
                               "nodes": [node.to_json() for node in nodes]}, indent=2))
    elif not nodes:
        click.echo(f"no dev cluster at {cluster.root} (start one with `batchpool "
                   "dev-cluster up N`)")
    else:
        running = sum(node.running for node in nodes)
        click.echo(f"{running} of {len(nodes)} node(s) running under {cluster.root}\n")
        click.echo(_table(nodes))
        click.echo(f"\nconfig: {cluster.config_file}")
    if any(not node.running for node in nodes):
        ctx.exit(1)


if __name__ == "__main__":  # pragma: no cover
    dev_cluster()
