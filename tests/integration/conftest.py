"""Integration fixtures: real OpenSSH sshd nodes on loopback (no mocks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchpool.devcluster import DevCluster, DevClusterError, DevNode, find_sshd
from batchpool.transport.base import NodeAddress


def require_sshd() -> None:
    """Skip the calling test when OpenSSH's sshd is not installed (the only reason to)."""
    try:
        find_sshd()
    except DevClusterError as exc:
        pytest.skip(f"needs OpenSSH sshd: {exc}")


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """Three sshd nodes for the whole session, always stopped at the end."""
    require_sshd()
    cluster = DevCluster(tmp_path_factory.mktemp("dev-cluster"))
    try:
        cluster.up(3)
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def dev_nodes(dev_cluster: DevCluster) -> list[DevNode]:
    nodes = dev_cluster.status()
    assert nodes and all(n.running for n in nodes), "a dev cluster node died"
    return nodes


def address_of(node: DevNode) -> NodeAddress:
    return NodeAddress(name=node.name, host=node.host, port=node.port)


@pytest.fixture
def node_address(dev_nodes: list[DevNode]) -> NodeAddress:
    return address_of(dev_nodes[0])


@pytest.fixture
def cluster_root(dev_cluster: DevCluster) -> Path:
    return dev_cluster.root
