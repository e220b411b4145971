"""A dev cluster: N real OpenSSH sshd daemons on 127.0.0.1, one per node.

Layout under the cluster root (default ``$BATCHPOOL_HOME/dev-cluster``)::

    client_key, client_key.pub   the one key every node accepts (root's login key)
    known_hosts                  every node's host key as [127.0.0.1]:PORT
    cluster.json                 nodes, ports and sshd pids of the running cluster
    batchpool.toml               a config with the pool "dev" for these nodes
    node0/ node1/ ...            per node: host key, sshd_config, sshd.pid, sshd.log
    nodes/127.0.0.1_PORT/        per node work directories (the pool's workdir)

`up` starts the daemons (all at once; 50 nodes take about half a second), `down` stops
exactly the processes `up` recorded — each sshd, verified by its command line, and
the session processes under it — and `status` reports which are alive. Every call
works from a fresh process: the state is in cluster.json.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from batchpool import paths
from batchpool.errors import BatchpoolError

LOOPBACK = "127.0.0.1"
POOL_NAME = "dev"
STATE_FILE = "cluster.json"
CONFIG_FILE = "batchpool.toml"
STATE_VERSION = 1
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
_T = TypeVar("_T")
_R = TypeVar("_R")


class DevClusterError(BatchpoolError):
    """The dev cluster could not be started, stopped or read."""


def default_root() -> Path:
    """Where the dev cluster lives unless told otherwise: `$BATCHPOOL_HOME/dev-cluster`."""
    return paths.home() / "dev-cluster"


def node_dir_name(address: str) -> str:
    """The workdir name of the node at `address`: the static provider names a node by its
    host string and replaces `{node}` with it made path-safe (127.0.0.1:2222 ->
    127.0.0.1_2222)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", address)


def find_sshd() -> Path:
    """The sshd binary (absolute: sshd re-executes itself), or a DevClusterError."""
    for candidate in ("/usr/sbin/sshd", shutil.which("sshd")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate).resolve()
    raise DevClusterError("sshd not found: the dev cluster runs real OpenSSH servers; "
                          "install openssh-server (Debian: apt-get install openssh-server)")


def find_ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if not found:
        raise DevClusterError("ssh-keygen not found: install the OpenSSH client "
                              "(Debian: apt-get install openssh-client)")
    return found


@dataclass(frozen=True)
class DevNode:
    """One node of the dev cluster."""

    name: str            # dev-0, dev-1, ...
    index: int
    port: int
    pid: int | None      # the sshd listener's pid
    dir: Path            # sshd_config, host key, pid file, log
    workdir: Path        # the node's own work directory
    running: bool = False
    host: str = LOOPBACK

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, as it appears in the pool's `hosts`."""
        return f"{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def pid_file(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(dir=str(self.dir), workdir=str(self.workdir), address=self.address)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DevNode:
        return cls(name=str(data["name"]), index=int(data["index"]), port=int(data["port"]),
                   pid=int(data["pid"]) if data.get("pid") else None,
                   dir=Path(data["dir"]), workdir=Path(data["workdir"]),
                   running=bool(data.get("running", False)),
                   host=str(data.get("host", LOOPBACK)))


# --- processes, via /proc ------------------------------------------------------------

def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of `pid`, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ...; comm may contain spaces and parentheses
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def pid_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def is_node_sshd(pid: int, config: Path) -> bool:
    """Whether `pid` is the live sshd started with `-f config` (guards against pid reuse)."""
    if not pid_alive(pid):
        return False
    cmd = _cmdline(pid)
    return "sshd" in cmd and f"-f {config}" in cmd


def descendants(pid: int) -> list[int]:
    """Every live process whose parent chain leads to `pid` (children first, deepest last)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                children.setdefault(st[1], []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def _free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on loopback (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (read from /proc/net/tcp, so the
    check opens no connection to the sshd; a connect() probe where /proc is missing)."""
    try:
        table = Path("/proc/net/tcp").read_text()
    except OSError:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex((LOOPBACK, port)) == 0
    wanted = f"0100007F:{port:04X}"
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
            return True
    return False


def _parallel(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(items))) as pool:
        return list(pool.map(fn, items))


# --- TOML ------------------------------------------------------------------------------

def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(top: dict[str, object], tables: dict[str, dict[str, object]],
            header: str = "") -> str:
    """A small TOML document: top-level scalars, then `[name]` tables of scalars/lists."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    for name, table in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


# --- the cluster -----------------------------------------------------------------------

class DevCluster:
    """N sshd nodes on loopback under `root`. No I/O happens until a method is called."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_root()).expanduser().absolute()

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def workdir_template(self) -> str:
        """The pool's workdir: `{node}` is replaced by the node's name, which for a static
        pool is its host string made path-safe (see `node_dir_name`)."""
        return str(self.root / "nodes" / "{node}")

    # state -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _load(self) -> list[DevNode]:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise DevClusterError(f"cannot read {self.state_file}: {exc}") from exc
        if data.get("version") != STATE_VERSION:
            raise DevClusterError(f"{self.state_file}: unknown state version "
                                  f"{data.get('version')!r}")
        return [DevNode.from_json(n) for n in data.get("nodes", [])]

    def _save(self, nodes: Sequence[DevNode]) -> None:
        data = {"version": STATE_VERSION, "root": str(self.root),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "nodes": [n.to_json() for n in nodes]}
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.state_file)

    def _with_liveness(self, node: DevNode) -> DevNode:
        alive = node.pid is not None and is_node_sshd(node.pid, node.config_path)
        return replace(node, running=alive)

    def status(self) -> list[DevNode]:
        """The recorded nodes, each with `running` checked against /proc."""
        return [self._with_liveness(n) for n in self._load()]

    # up ----------------------------------------------------------------------------------

    def up(self, n: int) -> list[DevNode]:
        """Start `n` nodes and write known_hosts, cluster.json and batchpool.toml.

        Refuses when nodes of this cluster are still running (run `down` first); a
        stale cluster.json (e.g. after a reboot) is replaced.
        """
        if n < 1:
            raise DevClusterError(f"a dev cluster needs at least 1 node, not {n}")
        sshd = find_sshd()
        keygen = find_ssh_keygen()
        with self._locked():
            running = [node for node in self.status() if node.running]
            if running:
                raise DevClusterError(
                    f"a dev cluster with {len(running)} running node(s) already exists at "
                    f"{self.root}; stop it first with `batchpool dev-cluster down"
                    f" --root {self.root}` (or use another --root)")
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
            _ensure_privsep_dir()
            nodes = [self._plan(i, port) for i, port in enumerate(_free_ports(n))]
            jobs: list[tuple[Path, str]] = [(n.host_key, f"batchpool dev node {n.name}")
                                            for n in nodes]
            if not (self.client_key.exists() and self.client_key.with_suffix(".pub").exists()):
                jobs.append((self.client_key, "batchpool dev-cluster client"))
            for node in nodes:
                node.dir.mkdir(parents=True, exist_ok=True)
            _parallel(lambda job: _keygen(keygen, *job), jobs)
            started: list[DevNode] = []
            try:
                started = _parallel(lambda node: self._start(sshd, node), nodes)
            except BaseException:
                # stop whatever did start, then re-raise
                for node in nodes:
                    self._stop_node(self._recover_pid(node))
                raise
            for node in started:
                node.workdir.mkdir(parents=True, exist_ok=True)
            self._save(started)
            self._write_known_hosts(started)
            self.write_config(nodes=started)
            return started

    def _plan(self, index: int, port: int) -> DevNode:
        return self._with_port(DevNode(name=f"dev-{index}", index=index, port=port, pid=None,
                                       dir=self.root / f"node{index}", workdir=self.root))

    def _with_port(self, node: DevNode, port: int | None = None) -> DevNode:
        node = replace(node, port=port or node.port)
        return replace(node, workdir=self.root / "nodes" / node_dir_name(node.address))

    def _sshd_config(self, node: DevNode) -> str:
        return "\n".join([
            f"# batchpool dev-cluster node {node.name}",
            f"ListenAddress {node.host}",
            f"Port {node.port}",
            f"HostKey {node.host_key}",
            f"PidFile {node.pid_file}",
            f"AuthorizedKeysFile {self.client_key}.pub",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "LogLevel INFO",
            "MaxStartups 200",
            "MaxSessions 100",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
            "",
        ])

    def _start(self, sshd: Path, node: DevNode, attempts: int = 3) -> DevNode:
        for attempt in range(attempts):
            if attempt:
                node = self._with_port(node, _free_ports(1)[0])
            node.config_path.write_text(self._sshd_config(node))
            with contextlib.suppress(FileNotFoundError):
                node.pid_file.unlink()
            with contextlib.suppress(FileNotFoundError):
                node.log_file.unlink()
            proc = subprocess.run(
                [str(sshd), "-f", str(node.config_path), "-E", str(node.log_file)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise DevClusterError(f"sshd for {node.name} did not start (exit "
                                      f"{proc.returncode}): {proc.stderr.strip()}"
                                      f"{self._log_tail(node)}")
            pid = self._wait_listening(node)
            if pid is not None:
                return replace(node, pid=pid, running=True)
            if "Address already in use" not in self._log_tail(node):
                break  # a different failure: retrying on another port will not help
        raise DevClusterError(f"sshd for {node.name} did not start listening on "
                              f"{node.address} within {START_TIMEOUT:g}s"
                              f"{self._log_tail(node)}")

    def _wait_listening(self, node: DevNode) -> int | None:
        """The sshd's pid once it listens on its port; None when it exited or timed out."""
        deadline = time.monotonic() + START_TIMEOUT
        pid: int | None = None
        while time.monotonic() < deadline:
            if pid is None:
                pid = _read_pid(node.pid_file)
            if pid is not None:
                if not pid_alive(pid):
                    return None
                if _listening(node.port):
                    return pid
            elif "fatal" in self._log_tail(node).lower() or "Cannot bind" in self._log_tail(
                    node):
                return None
            time.sleep(0.01)
        if pid is not None:
            self._stop_node(replace(node, pid=pid))
        return None

    def _log_tail(self, node: DevNode) -> str:
        try:
            lines = node.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return ("\n  " + "\n  ".join(lines[-5:])) if lines else ""

    def _recover_pid(self, node: DevNode) -> DevNode:
        return replace(node, pid=_read_pid(node.pid_file))

    def _write_known_hosts(self, nodes: Sequence[DevNode]) -> None:
        lines = []
        for node in nodes:
            key_type, key_b64 = node.host_key.with_suffix(".pub").read_text().split()[:2]
            lines.append(f"[{node.host}]:{node.port} {key_type} {key_b64}\n")
        self.known_hosts.write_text("".join(lines))

    # down --------------------------------------------------------------------------------

    def down(self) -> list[DevNode]:
        """Stop every recorded node (sshd + its sessions); returns the nodes as they were.

        Only processes recorded by `up` are touched: a pid whose command line is not
        this node's sshd (the pid was reused) is left alone.
        """
        with self._locked():
            nodes = self.status()
            _parallel(self._stop_node, [n for n in nodes if n.running])
            still = [n for n in self.status() if n.running]
            if still:
                raise DevClusterError("could not stop " + ", ".join(
                    f"{n.name} (pid {n.pid})" for n in still))
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
            return nodes

    @staticmethod
    def _stop_node(node: DevNode) -> None:
        if node.pid is None or not is_node_sshd(node.pid, node.config_path):
            return
        # stop the listener first so no new session starts, then its sessions
        tree = descendants(node.pid)
        _signal_all([node.pid], signal.SIGTERM)
        _signal_all(tree, signal.SIGTERM)
        tree += [p for p in descendants(node.pid) if p not in tree]
        left = _wait_gone([node.pid, *tree], STOP_TIMEOUT)
        if left:
            _signal_all(left, signal.SIGKILL)
            _wait_gone(left, STOP_TIMEOUT)

    # config ------------------------------------------------------------------------------

    def pool_config(self, nodes: Sequence[DevNode] | None = None) -> dict[str, object]:
        """The `[pools.dev]` table for the cluster's nodes."""
        if nodes is None:
            nodes = self._load()
        return {
            "provider": "static",
            "hosts": [n.address for n in nodes],
            "known_hosts": str(self.known_hosts),
            "host_key_policy": "strict",
            "identity_file": str(self.client_key),
            "python": sys.executable,
            "workdir": self.workdir_template,
        }

    def write_config(self, path: Path | None = None,
                     nodes: Sequence[DevNode] | None = None) -> Path:
        """Write a batchpool.toml with the pool "dev" (default: root/batchpool.toml)."""
        path = path or self.config_file
        header = ("batchpool config for the dev cluster at " + str(self.root) + "\n"
                  "written by `batchpool dev-cluster up`; rewritten on every `up`.\n"
                  "workdir: {node} is replaced by the node's name (its host, made path-safe),\n"
                  "so every node has its own work directory.\n"
                  f"Use: batchpool run SPEC --pool {POOL_NAME} --config {path}")
        text = to_toml({"default_pool": POOL_NAME},
                       {f"pools.{POOL_NAME}": self.pool_config(nodes)}, header)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _keygen(keygen: str, path: Path, comment: str) -> None:
    for stale in (path, path.with_suffix(".pub")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    proc = subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                           "-f", str(path)], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise DevClusterError(f"ssh-keygen failed for {path}: {proc.stderr.strip()}")


def _ensure_privsep_dir() -> None:
    """sshd refuses to start without its privilege separation directory."""
    run_dir = Path("/run/sshd")
    if run_dir.is_dir():
        return
    try:
        run_dir.mkdir(mode=0o755, parents=True)
    except OSError as exc:
        raise DevClusterError(f"sshd needs the directory {run_dir}, which is missing and "
                              f"cannot be created ({exc.strerror}); create it as root: "
                              f"mkdir -p {run_dir}") from exc
