"""The SSH transport against real sshd nodes (the dev cluster), plus its pure host key policy."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from batchpool.devcluster import DevCluster, DevNode, descendants
from batchpool.errors import CommandError, HostKeyError, TransportError
from batchpool.transport import known_hosts as kh
from batchpool.transport.base import NodeAddress
from batchpool.transport.ssh import SshConnection, SshOptions, SshTransport

T = TypeVar("T")
ssh = pytest.mark.ssh


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def address(node: DevNode, **changes: Any) -> NodeAddress:
    fields: dict[str, Any] = {"name": node.name, "host": node.host, "port": node.port}
    fields.update(changes)
    return NodeAddress(**fields)


def options(cluster: DevCluster, **changes: Any) -> SshOptions:
    fields: dict[str, Any] = {"known_hosts": cluster.known_hosts,
                              "identity_file": cluster.client_key}
    fields.update(changes)
    return SshOptions(**fields)


async def connect(cluster: DevCluster, node: DevNode, **changes: Any) -> SshConnection:
    return await SshTransport(options(cluster, **changes)).connect(address(node))


def host_key_line(node: DevNode) -> tuple[str, str]:
    key_type, key_b64 = node.host_key.with_suffix(".pub").read_text().split()[:2]
    return key_type, key_b64


def other_key(tmp_path: Path) -> str:
    path = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().split()[1]


# --- connect, run, files, agent --------------------------------------------------------

@ssh
def test_connect_and_run(dev_cluster: DevCluster, dev_nodes: list[DevNode]) -> None:
    async def go() -> None:
        started = time.monotonic()
        conn = await connect(dev_cluster, dev_nodes[0])
        elapsed = time.monotonic() - started
        print(f"\nSSH connect (handshake + auth) took {elapsed * 1000:.0f} ms")
        async with conn:
            ok = await conn.run("echo hello")
            assert (ok.exit_status, ok.stdout, ok.stderr) == (0, "hello\n", "")
            failed = await conn.run("echo out; echo oops >&2; exit 7")
            assert failed.exit_status == 7
            assert failed.stdout == "out\n"
            assert failed.stderr == "oops\n"
            port = await conn.run("echo $SSH_CONNECTION")
            assert port.stdout.split()[-1] == str(dev_nodes[0].port)
            # several commands at once on one connection
            results = await asyncio.gather(*(conn.run(f"echo {i}") for i in range(8)))
            assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]
    run(go())


@ssh
def test_aes_gcm_is_negotiated_first(dev_cluster: DevCluster, dev_nodes: list[DevNode]) -> None:
    async def go() -> None:
        async with await connect(dev_cluster, dev_nodes[0]) as conn:
            ssh = conn._conn  # the asyncssh connection, as negotiated with OpenSSH's sshd
            assert ssh._enc_alg_cs == ssh._enc_alg_sc == b"aes128-gcm@openssh.com"
    run(go())


@ssh
def test_run_timeout_raises_command_error(dev_cluster: DevCluster,
                                          dev_nodes: list[DevNode]) -> None:
    async def go() -> None:
        async with await connect(dev_cluster, dev_nodes[0]) as conn:
            started = time.monotonic()
            with pytest.raises(CommandError, match="timed out") as info:
                await conn.run("sleep 30", timeout=0.5)
            assert info.value.exit_status is None
            assert time.monotonic() - started < 5
            assert (await conn.run("echo still usable")).exit_status == 0
    run(go())


@ssh
def test_put_get_round_trip_nested(dev_cluster: DevCluster, dev_nodes: list[DevNode],
                                   tmp_path: Path) -> None:
    node = dev_nodes[1]
    payload = os.urandom(300_000) + b"\nend\n"
    local = tmp_path / "payload.bin"
    local.write_bytes(payload)
    remote = f"{node.workdir}/put-test/a/b/c/payload.bin"
    back = tmp_path / "back" / "deeper" / "payload.bin"

    async def go() -> None:
        async with await connect(dev_cluster, node) as conn:
            await conn.put(local, remote)
            listing = await conn.run(f"wc -c < {remote}")
            assert int(listing.stdout) == len(payload)
            await conn.get(remote, back)
            # the lazily opened SFTP client is reused
            await conn.put(local, f"{node.workdir}/put-test/second.bin")
            with pytest.raises(TransportError, match="no-such-file"):
                await conn.get(f"{node.workdir}/no-such-file", tmp_path / "x")
            with pytest.raises(TransportError):
                await conn.put(tmp_path / "missing-local", f"{node.workdir}/x")
    run(go())
    assert back.read_bytes() == payload


@ssh
def test_put_relative_to_login_dir(dev_cluster: DevCluster, dev_nodes: list[DevNode],
                                   tmp_path: Path) -> None:
    local = tmp_path / "rel.txt"
    local.write_text("relative\n")
    name = f"batchpool-rel-test-{os.getpid()}"

    async def go() -> None:
        async with await connect(dev_cluster, dev_nodes[0]) as conn:
            await conn.put(local, f"{name}/sub/rel.txt")
            out = await conn.run(f"cat ~/{name}/sub/rel.txt && rm -r ~/{name}")
            assert out.stdout == "relative\n"
    run(go())


@ssh
def test_agent_stream_echoes_and_sees_eof(dev_cluster: DevCluster, dev_nodes: list[DevNode],
                                          tmp_path: Path) -> None:
    marker = tmp_path / "agent-saw-eof"
    program = ("import sys, pathlib\n"
               "for line in sys.stdin.buffer:\n"
               "    sys.stdout.buffer.write(line.upper()); sys.stdout.flush()\n"
               f"pathlib.Path({str(marker)!r}).write_text('eof')\n")
    command = f"{sys.executable} -u -c {_quote(program)}"

    async def go() -> None:
        async with await connect(dev_cluster, dev_nodes[2]) as conn:
            agent = await conn.start_agent(command)
            for i in range(100):
                agent.write(f"message {i}\n".encode())
            await agent.drain()
            lines = [await agent.readline() for _ in range(100)]
            assert lines == [f"MESSAGE {i}\n".encode() for i in range(100)]
            big = b"x" * 1_000_000 + b"\n"
            agent.write(big)
            await agent.drain()
            assert await agent.readline() == big.upper()
            agent.close()
            deadline = time.monotonic() + 10
            # the program creates the file, then writes it: an empty one is not there yet
            while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert marker.read_text() == "eof"
            assert await agent.readline() == b""

            cat = await conn.start_agent("cat")
            cat.write(b"ping\n")
            await cat.drain()
            assert await cat.readline() == b"ping\n"
        # closing the connection closed the cat agent too
        assert await cat.readline() == b""
    run(go())


@ssh
def test_closed_connection_refuses_use(dev_cluster: DevCluster,
                                       dev_nodes: list[DevNode]) -> None:
    async def go() -> None:
        conn = await connect(dev_cluster, dev_nodes[0])
        await conn.close()
        await conn.close()  # idempotent
        with pytest.raises(TransportError, match="closed"):
            await conn.run("true")
    run(go())


# --- host keys -------------------------------------------------------------------------

@ssh
def test_unknown_host_key_refused_with_fix(dev_cluster: DevCluster, dev_nodes: list[DevNode],
                                          tmp_path: Path) -> None:
    node = dev_nodes[0]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    _, key_b64 = host_key_line(node)
    fp = kh.fingerprint(base64.b64decode(key_b64))
    with pytest.raises(HostKeyError) as info:
        run(connect(dev_cluster, node, known_hosts=empty))
    message = str(info.value)
    assert f"[127.0.0.1]:{node.port}" in message
    assert fp in message
    assert f"ssh-keyscan -p {node.port} 127.0.0.1 >> {empty}" in message
    assert 'host_key_policy = "accept-new"' in message
    assert empty.read_text() == ""  # strict never writes


@ssh
def test_missing_known_hosts_file_means_unknown(dev_cluster: DevCluster,
                                                dev_nodes: list[DevNode],
                                                tmp_path: Path) -> None:
    with pytest.raises(HostKeyError, match="unknown"):
        run(connect(dev_cluster, dev_nodes[0], known_hosts=tmp_path / "absent"))
    assert not (tmp_path / "absent").exists()


@ssh
@pytest.mark.parametrize("policy", ["strict", "accept-new"])
def test_changed_host_key_refused(dev_cluster: DevCluster, dev_nodes: list[DevNode],
                                  tmp_path: Path, policy: kh.HostKeyPolicy) -> None:
    node = dev_nodes[1]
    wrong = tmp_path / "known_hosts"
    wrong_b64 = other_key(tmp_path)
    wrong.write_text(f"[127.0.0.1]:{node.port} ssh-ed25519 {wrong_b64}\n")
    before = wrong.read_text()
    _, real_b64 = host_key_line(node)
    with pytest.raises(HostKeyError) as info:
        run(connect(dev_cluster, node, known_hosts=wrong, host_key_policy=policy))
    message = str(info.value)
    assert "CHANGED" in message
    assert kh.fingerprint(base64.b64decode(real_b64)) in message
    assert kh.fingerprint(base64.b64decode(wrong_b64)) in message
    assert f"ssh-keygen -R '[127.0.0.1]:{node.port}'" in message
    assert wrong.read_text() == before


@ssh
def test_changed_key_of_another_type_refused(dev_cluster: DevCluster,
                                             dev_nodes: list[DevNode],
                                             tmp_path: Path) -> None:
    # known_hosts records an RSA key; the node only has ed25519: still a changed key
    node = dev_nodes[2]
    rsa = tmp_path / "rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)],
                   check=True)
    kh_file = tmp_path / "known_hosts"
    kh_file.write_text(f"[127.0.0.1]:{node.port} ssh-rsa "
                       f"{rsa.with_suffix('.pub').read_text().split()[1]}\n")
    _, real_b64 = host_key_line(node)
    with pytest.raises(HostKeyError, match="CHANGED") as info:
        run(connect(dev_cluster, node, known_hosts=kh_file, host_key_policy="accept-new"))
    assert kh.fingerprint(base64.b64decode(real_b64)) in str(info.value)


@ssh
def test_accept_new_records_then_strict_accepts(dev_cluster: DevCluster,
                                                dev_nodes: list[DevNode],
                                                tmp_path: Path) -> None:
    node = dev_nodes[0]
    path = tmp_path / "sub" / "known_hosts"

    async def go() -> None:
        # concurrent first contacts record the key exactly once
        conns = await asyncio.gather(*(connect(dev_cluster, node, known_hosts=path,
                                               host_key_policy="accept-new")
                                       for _ in range(4)))
        for conn in conns:
            await conn.close()
        async with await connect(dev_cluster, node, known_hosts=path) as conn:
            assert (await conn.run("true")).exit_status == 0

    run(go())
    key_type, key_b64 = host_key_line(node)
    assert path.read_text() == f"[127.0.0.1]:{node.port} {key_type} {key_b64}\n"


@ssh
def test_accept_new_keeps_other_entries(dev_cluster: DevCluster, dev_nodes: list[DevNode],
                                        tmp_path: Path) -> None:
    node = dev_nodes[1]
    path = tmp_path / "known_hosts"
    path.write_text("# mine\nexample.org ssh-ed25519 " + other_key(tmp_path))  # no newline
    run(_connect_and_close(dev_cluster, node, known_hosts=path, host_key_policy="accept-new"))
    lines = path.read_text().splitlines()
    assert lines[0] == "# mine"
    assert lines[1].startswith("example.org ")
    assert lines[2].startswith(f"[127.0.0.1]:{node.port} ssh-ed25519 ")


@ssh
def test_hashed_known_hosts_entry_accepted(dev_cluster: DevCluster, dev_nodes: list[DevNode],
                                          tmp_path: Path) -> None:
    node = dev_nodes[2]
    path = tmp_path / "known_hosts"
    key_type, key_b64 = host_key_line(node)
    path.write_text(f"[127.0.0.1]:{node.port} {key_type} {key_b64}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(path)], check=True, capture_output=True)
    assert path.read_text().startswith("|1|")
    run(_connect_and_close(dev_cluster, node, known_hosts=path))


@ssh
def test_revoked_key_refused(dev_cluster: DevCluster, dev_nodes: list[DevNode],
                             tmp_path: Path) -> None:
    node = dev_nodes[0]
    key_type, key_b64 = host_key_line(node)
    path = tmp_path / "known_hosts"
    path.write_text(f"[127.0.0.1]:{node.port} {key_type} {key_b64}\n"
                    f"@revoked * {key_type} {key_b64}\n")
    with pytest.raises(HostKeyError, match="revoked"):
        run(connect(dev_cluster, node, known_hosts=path, host_key_policy="accept-new"))


def test_no_option_disables_verification() -> None:
    with pytest.raises(ValueError, match="always verified"):
        SshOptions(host_key_policy="off")  # type: ignore[arg-type]


# --- connection errors -----------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@ssh
def test_connection_refused_is_quick(dev_cluster: DevCluster, dev_nodes: list[DevNode]) -> None:
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(TransportError, match="refused") as info:
        run(SshTransport(options(dev_cluster)).connect(
            NodeAddress("gone", "127.0.0.1", port), timeout=10))
    assert time.monotonic() - started < 2
    assert f"127.0.0.1:{port}" in str(info.value)
    assert not isinstance(info.value, HostKeyError)


@ssh
def test_silent_server_times_out(dev_cluster: DevCluster) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            run(SshTransport(options(dev_cluster)).connect(
                NodeAddress("mute", "127.0.0.1", port), timeout=0.7))
        assert time.monotonic() - started < 3


@ssh
def test_auth_failure_unknown_user(dev_cluster: DevCluster, dev_nodes: list[DevNode]) -> None:
    node = dev_nodes[0]
    with pytest.raises(TransportError, match="authentication failed") as info:
        run(SshTransport(options(dev_cluster)).connect(
            address(node, user="no-such-user-bp")))
    assert "no-such-user-bp@127.0.0.1" in str(info.value)
    assert not isinstance(info.value, HostKeyError)


@ssh
def test_auth_failure_wrong_key(dev_cluster: DevCluster, dev_nodes: list[DevNode],
                                tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    with pytest.raises(TransportError, match="authentication failed"):
        run(connect(dev_cluster, dev_nodes[0], identity_file=stranger))


@ssh
def test_missing_identity_file(dev_cluster: DevCluster, dev_nodes: list[DevNode],
                               tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="no-key"):
        run(connect(dev_cluster, dev_nodes[0], identity_file=tmp_path / "no-key"))


@ssh
def test_connection_lost_during_run(dev_cluster: DevCluster, dev_nodes: list[DevNode]) -> None:
    node = dev_nodes[2]
    assert node.pid is not None

    async def go() -> None:
        async with await connect(dev_cluster, node) as conn:
            running = asyncio.create_task(conn.run("sleep 30; echo never"))
            await asyncio.sleep(0.5)
            # kill -9 this connection's session processes on the node (not the listener)
            for pid in descendants(node.pid or 0):
                os.kill(pid, 9)
            started = time.monotonic()
            with pytest.raises(TransportError, match=r"lost|closed") as info:
                await asyncio.wait_for(running, 10)
            assert time.monotonic() - started < 10
            print(f"\n{info.value}")
    run(go())


# --- ~/.ssh/config ---------------------------------------------------------------------

@ssh
def test_ssh_config_alias(dev_cluster: DevCluster, dev_nodes: list[DevNode],
                          tmp_path: Path) -> None:
    node, other = dev_nodes[0], dev_nodes[1]
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host mynode\n"
        "    HostName 127.0.0.1\n"
        f"    Port {node.port}\n"
        "    User root\n"
        f"    IdentityFile {dev_cluster.client_key}\n"
        "    PasswordAuthentication yes\n"          # must be ignored
        "    StrictHostKeyChecking no\n"            # must be ignored
        "    UserKnownHostsFile /dev/null\n")       # must be ignored
    transport = SshTransport(SshOptions(known_hosts=dev_cluster.known_hosts, ssh_config=config))

    async def go() -> None:
        async with await transport.connect(NodeAddress("mynode", "mynode")) as conn:
            out = await conn.run("echo $SSH_CONNECTION")
            assert out.stdout.split()[-1] == str(node.port)
        # the address's port wins over the config's
        async with await transport.connect(
                NodeAddress("mynode", "mynode", port=other.port)) as conn:
            out = await conn.run("echo $SSH_CONNECTION")
            assert out.stdout.split()[-1] == str(other.port)
        # ...and the config's "no checking" did not turn verification off
        strict = SshTransport(SshOptions(known_hosts=tmp_path / "empty", ssh_config=config))
        with pytest.raises(HostKeyError):
            await strict.connect(NodeAddress("mynode", "mynode"))

    run(go())


async def _connect_and_close(cluster: DevCluster, node: DevNode, **changes: Any) -> None:
    conn = await connect(cluster, node, **changes)
    assert (await conn.run("true")).exit_status == 0
    await conn.close()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


# --- the pure policy (no sshd) ---------------------------------------------------------

KEY_A = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"A" * 36).decode()
KEY_B = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + b"B" * 36).decode()
BLOB_A = base64.b64decode(KEY_A)
BLOB_B = base64.b64decode(KEY_B)


def _hashed(token: str) -> str:
    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, token.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@pytest.mark.parametrize(("line", "host", "addr", "port", "verdict"), [
    (f"[10.0.0.1]:2222 ssh-ed25519 {KEY_A}", "10.0.0.1", "10.0.0.1", 2222, "accept"),
    (f"[10.0.0.1]:2222 ssh-ed25519 {KEY_B}", "10.0.0.1", "10.0.0.1", 2222, "changed"),
    # a port-22 entry does not cover another port (OpenSSH semantics)
    (f"10.0.0.1 ssh-ed25519 {KEY_B}", "10.0.0.1", "10.0.0.1", 2222, "unknown"),
    (f"10.0.0.1 ssh-ed25519 {KEY_A}", "10.0.0.1", "10.0.0.1", 22, "accept"),
    (f"node1,node2 ssh-ed25519 {KEY_A}", "NODE2", "10.0.0.9", 22, "accept"),
    (f"node* ssh-ed25519 {KEY_A}", "node7", "10.0.0.9", None, "accept"),
    (f"node?,!node3 ssh-ed25519 {KEY_A}", "node3", "10.0.0.9", None, "unknown"),
    (f"other ssh-ed25519 {KEY_A}", "node1", "10.0.0.9", None, "unknown"),
    (f"10.0.0.9 ssh-ed25519 {KEY_B}", "node1", "10.0.0.9", None, "changed"),  # by address
    (f"{_hashed('[node1]:2200')} ssh-ed25519 {KEY_A}", "node1", "1.2.3.4", 2200, "accept"),
    (f"{_hashed('node1')} ssh-ed25519 {KEY_B}", "node1", "1.2.3.4", 22, "changed"),
    (f"@revoked * ssh-ed25519 {KEY_A}", "node1", "1.2.3.4", 22, "revoked"),
    (f"@cert-authority * ssh-ed25519 {KEY_B}", "node1", "1.2.3.4", 22, "unknown"),
    (f"node1 ssh-rsa {KEY_B}", "node1", "1.2.3.4", 22, "changed"),  # other type known
])
def test_decide_strict(line: str, host: str, addr: str, port: int | None,
                       verdict: str) -> None:
    entries = kh.parse_known_hosts("# comment\n\n" + line + "\ngarbage\n")
    decision = kh.decide(entries, host, addr, port, "ssh-ed25519", BLOB_A, "strict")
    assert decision.verdict == verdict


def test_decide_accept_new_records_only_unknown_hosts() -> None:
    entries = kh.parse_known_hosts(f"[h]:2200 ssh-ed25519 {KEY_B}\n")
    new = kh.decide(entries, "other", "", 2200, "ssh-ed25519", BLOB_A, "accept-new")
    assert new.verdict is kh.Verdict.RECORD and new.verdict.accepted
    assert kh.format_entry(new.host, new.port, new.key_type, KEY_A) == \
        f"[other]:2200 ssh-ed25519 {KEY_A}\n"
    changed = kh.decide(entries, "h", "", 2200, "ssh-ed25519", BLOB_A, "accept-new")
    assert changed.verdict is kh.Verdict.CHANGED and not changed.verdict.accepted
    assert "line 1" in changed.message("/kh")
    with pytest.raises(ValueError):
        kh.decide(entries, "h", "", 22, "ssh-ed25519", BLOB_A, "yolo")  # type: ignore[arg-type]


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    blob = base64.b64decode(key.with_suffix(".pub").read_text().split()[1])
    listed = subprocess.run(["ssh-keygen", "-lf", str(key.with_suffix(".pub"))], check=True,
                            capture_output=True, text=True).stdout
    assert kh.fingerprint(blob) == listed.split()[1]


def test_record_host_key_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "kh"
    decision = kh.decide([], "h", "", 2200, "ssh-ed25519", BLOB_A, "accept-new")
    assert kh.record_host_key(path, decision, KEY_A).verdict is kh.Verdict.RECORD
    assert kh.record_host_key(path, decision, KEY_A).verdict is kh.Verdict.ACCEPT
    assert path.read_text() == f"[h]:2200 ssh-ed25519 {KEY_A}\n"
    other = kh.decide([], "h", "", 2200, "ssh-ed25519", BLOB_B, "accept-new")
    assert kh.record_host_key(path, other, KEY_B).verdict is kh.Verdict.CHANGED
    assert path.read_text() == f"[h]:2200 ssh-ed25519 {KEY_A}\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
