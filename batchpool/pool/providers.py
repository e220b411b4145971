"""How a pool's nodes come to exist: the local machine, or a static list of SSH hosts.

A provider turns a PoolConfig into a transport and the list of nodes to bring up;
the controller does the bringing up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from batchpool import defaults
from batchpool.config import PoolConfig, config_error
from batchpool.errors import ConfigError
from batchpool.pool.local import local_settings
from batchpool.pool.session import NodeSettings
from batchpool.spec.locate import FieldPath
from batchpool.transport.base import NodeAddress, Transport
from batchpool.transport.local import LocalTransport


@dataclass(frozen=True)
class NodePlan:
    address: NodeAddress
    settings: NodeSettings


def plan_pool(pool: PoolConfig) -> tuple[Transport, list[NodePlan]]:
    """The transport and the nodes of `pool`."""
    slots = None if pool.slots_per_node == "auto" else int(pool.slots_per_node)
    if pool.provider == "local":
        settings = local_settings(pool.python, slots, pool.start_task)
        return LocalTransport(), [NodePlan(NodeAddress("local"), settings)]
    if pool.provider == "static":
        from batchpool.transport.ssh import SshOptions, SshTransport

        if not pool.hosts:
            raise ConfigError(f"pool {pool.name!r} has provider \"static\" but no hosts")
        options = SshOptions(
            known_hosts=_path(pool.known_hosts), host_key_policy=pool.host_key_policy,
            identity_file=_path(pool.identity_file), ssh_config=_path(pool.ssh_config))
        plans = []
        for host in pool.hosts:
            address = parse_host(host)
            workdir = pool.workdir.replace("{node}", safe_name(address.name))
            plans.append(NodePlan(address, NodeSettings(
                python=pool.python, workdir=workdir, slots=slots, start_task=pool.start_task,
                heartbeat=defaults.HEARTBEAT_INTERVAL, local_results=None)))
        return SshTransport(options), plans
    raise ConfigError(f"pool {pool.name!r}: provider {pool.provider!r} is not available yet")


def check_pool(pool: PoolConfig) -> None:
    """Plan `pool` as the controller will, so that a pool that cannot work is refused
    before a job is recorded (or claimed) rather than after.

    Raises ConfigError pointing at the pool in its config file.
    """
    where: FieldPath = ("pools", pool.name)
    if pool.provider == "static":
        where = (*where, "hosts")
        for position, host in enumerate(pool.hosts):
            try:
                parse_host(host)
            except ConfigError as exc:
                raise config_error(pool.source, (*where, position), exc.message) from None
    try:
        plan_pool(pool)
    except ConfigError as exc:
        raise config_error(pool.source, where, exc.message) from None


_HOST = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s]+)(?::(?P<port>\d+))?$")


def parse_host(text: str) -> NodeAddress:
    """'node1', 'node2:2222', 'alice@node3', '[::1]:22' -> a NodeAddress named `text`."""
    match = _HOST.match(text.strip())
    if not match:
        raise ConfigError(f"bad host {text!r}: use HOST, HOST:PORT or USER@HOST[:PORT]")
    port = int(match.group("port")) if match.group("port") else None
    return NodeAddress(name=text.strip(), host=match.group("host").strip("[]"), port=port,
                       user=match.group("user"))


def safe_name(name: str) -> str:
    """A node name usable as one path component."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None

