"""`batchpool pool ...` and `batchpool node list`: the pools in the config and their nodes."""

from __future__ import annotations

import click

from batchpool.cli.common import config_option, console, emit_json, handle_errors, json_option
from batchpool.cli.common import open_store as _open_store
from batchpool.config import load_config
from batchpool.display import rows_table
from batchpool.nodes import node_rows


@click.group()
def pool() -> None:
    """Inspect the pools defined in batchpool.toml (plus the built-in `local`)."""


@pool.command("list")
@config_option
@json_option
@handle_errors
def list_pools(config_file: str | None, as_json: bool) -> None:
    """List pools: provider, hosts and scaling bounds."""
    config = load_config(config_file)
    pools = [p.model_dump(exclude_none=True) | {"default": p.name == config.default_pool}
             for p in config.pools.values()]
    if as_json:
        emit_json(pools)
        return
    console().print(rows_table(
        ("name", "provider", "hosts", "slots/node", "default"),
        [(p["name"], p["provider"], len(p.get("hosts", ())) or "", p["slots_per_node"],
          "*" if p["default"] else "") for p in pools]))


@pool.command()
@click.argument("name")
@config_option
@json_option
@handle_errors
def show(name: str, config_file: str | None, as_json: bool) -> None:
    """Show a pool's settings and the last known state of its nodes."""
    settings = load_config(config_file).pool(name)
    nodes = node_rows(_open_store(), settings.name)
    if as_json:
        emit_json({"pool": settings.model_dump(), "nodes": nodes})
        return
    out = console()
    out.print(rows_table(("setting", "value"),
                         [(k, v) for k, v in settings.model_dump(exclude_none=True).items()],
                         title=f"pool {settings.name}"))
    out.print(_nodes_table(nodes))


@click.group()
def node() -> None:
    """Inspect nodes."""


@node.command("list")
@click.option("--pool", "pool_name", help="Only this pool's nodes.")
@json_option
@handle_errors
def list_nodes(pool_name: str | None, as_json: bool) -> None:
    """List nodes: state (with reason), slots used/total, load, last heartbeat."""
    nodes = node_rows(_open_store(), pool_name)
    if as_json:
        emit_json(nodes)
    else:
        console().print(_nodes_table(nodes))


def _nodes_table(nodes: list[dict[str, object]]) -> object:
    return rows_table(
        ("pool", "node", "state", "slots", "load", "heartbeat", "reason"),
        [(n["pool"], n["name"], n["state"], f"{n['running']}/{n['slots']}",
          "" if n["load"] is None else f"{n['load']:.2f}", n["heartbeat_age"], n["reason"])
         for n in nodes])
