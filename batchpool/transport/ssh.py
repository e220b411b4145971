"""The SSH transport: asyncssh behind the `Transport` interface.

* Addresses may be ~/.ssh/config aliases: HostName, Port, User, IdentityFile (and the
  rest of what asyncssh supports) come from the config file; an explicit port or user
  in the `NodeAddress` wins over the config.
* Authentication is by key only: `identity_file` (when given) or the config's
  IdentityFile / the default ~/.ssh/id_* keys, plus the SSH agent when SSH_AUTH_SOCK
  (or IdentityAgent) is set. Passwords and keyboard-interactive prompts are never used.
* Host keys are always verified against one known_hosts file with the policy in
  `batchpool.transport.known_hosts`; GSS key exchange and X.509 host certificates
  (which would bypass that file) are switched off.

This is the only module in batchpool that imports asyncssh; the host key policy itself
is pure code in `batchpool.transport.known_hosts`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from batchpool.errors import CommandError, HostKeyError, TransportError
from batchpool.transport import known_hosts as kh
from batchpool.transport.base import CommandResult, Connection, NodeAddress, Transport

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
DEFAULT_SSH_CONFIG = Path("~/.ssh/config")
DEFAULT_CONNECT_TIMEOUT = 15.0
DEFAULT_KEEPALIVE_INTERVAL = 15.0
DEFAULT_KEEPALIVE_COUNT_MAX = 4
STDERR_TAIL_BYTES = 64 * 1024


#: asyncssh's default ciphers, AES-GCM first (OpenSSH puts chacha20-poly1305 first):
#: with AES-NI it costs the controller a fraction of chacha20's CPU per packet, and
#: task traffic is many small packets.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
           "chacha20-poly1305@openssh.com", "aes256-ctr", "aes192-ctr", "aes128-ctr")


@dataclass(frozen=True)
class SshOptions:
    """How `SshTransport` connects. Validated at construction; paths are ~-expanded.

    known_hosts        the file host keys are checked against (default ~/.ssh/known_hosts);
                       a missing file means no host is known yet.
    host_key_policy    "strict" (only recorded keys) or "accept-new" (record the key of a
                       host seen for the first time; a changed key is still refused).
    identity_file      a private key to authenticate with; None: the ssh config's
                       IdentityFile, else the default ~/.ssh/id_* keys. The agent is
                       used in every case when one is running.
    ssh_config         an OpenSSH client config file; None: ~/.ssh/config when it exists.
    connect_timeout    seconds for TCP connect + handshake + authentication.
    keepalive_interval seconds between keepalives on an idle connection (0: none); the
                       connection is declared lost after 4 unanswered ones.
    """

    known_hosts: Path | None = None
    host_key_policy: kh.HostKeyPolicy = "strict"
    identity_file: Path | None = None
    ssh_config: Path | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL

    def __post_init__(self) -> None:
        if self.host_key_policy not in kh.HOST_KEY_POLICIES:
            raise ValueError(f"host_key_policy must be one of "
                             f"{', '.join(kh.HOST_KEY_POLICIES)}, not {self.host_key_policy!r}"
                             " (host keys are always verified)")
        if self.connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be positive, got {self.connect_timeout}")
        if self.keepalive_interval < 0:
            raise ValueError(f"keepalive_interval must be >= 0, got {self.keepalive_interval}")
        for name in ("known_hosts", "identity_file", "ssh_config"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser())

    @property
    def known_hosts_path(self) -> Path:
        return self.known_hosts or DEFAULT_KNOWN_HOSTS.expanduser()


def describe(address: NodeAddress) -> str:
    """`name (user@host:port)` for messages."""
    target = address.host
    if address.user:
        target = f"{address.user}@{target}"
    if address.port:
        target = f"{target}:{address.port}"
    return target if address.name == target else f"{address.name} ({target})"


class _HostKeyCheck:
    """The known_hosts policy for one connection attempt; remembers what it decided."""

    def __init__(self, entries: list[kh.KnownHostEntry], policy: kh.HostKeyPolicy) -> None:
        self.entries = entries
        self.policy = policy
        self.decision: kh.Decision | None = None
        self.key_b64: str | None = None
        self.looked_up: tuple[str, str, int | None] | None = None
        self.known_for_host: list[kh.KnownHostEntry] = []

    def trusted(self, host: str, addr: str, port: int | None) -> tuple[list[Any], ...]:
        """asyncssh's known_hosts callback: (host keys, CA keys, revoked keys)."""
        self.looked_up = (host, addr, port)
        matched = kh.entries_for(self.entries, host, addr, port)
        self.known_for_host = [e for e in matched if e.marker is None]
        lists: dict[str | None, list[Any]] = {None: [], "cert-authority": [], "revoked": []}
        for entry in matched:
            try:
                key = asyncssh.import_public_key(f"{entry.key_type} {entry.key_b64}")
            except (asyncssh.KeyImportError, ValueError):
                continue  # a key type asyncssh cannot read cannot match either
            lists[entry.marker].append(key)
        return lists[None], lists["cert-authority"], lists["revoked"]

    def validate(self, host: str, addr: str, port: int, key: Any) -> bool:
        blob: bytes = key.public_data
        key_type: str = key.algorithm.decode()
        self.key_b64 = base64.b64encode(blob).decode()
        self.decision = kh.decide(self.entries, host, addr, port, key_type, blob, self.policy)
        return self.decision.verdict.accepted


class _Client(asyncssh.SSHClient):
    def __init__(self, check: _HostKeyCheck) -> None:
        self._check = check

    def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
        return self._check.validate(host, addr, port, key)


class SshTransport(Transport):
    """Opens SSH connections to nodes with the given `SshOptions`."""

    def __init__(self, options: SshOptions | None = None) -> None:
        self.options = options or SshOptions()

    async def connect(self, address: NodeAddress, timeout: float = 15.0) -> SshConnection:
        opts = self.options
        known_path = opts.known_hosts_path
        entries = await asyncio.to_thread(kh.read_entries, known_path)
        check = _HostKeyCheck(entries, opts.host_key_policy)
        kwargs: dict[str, Any] = dict(
            known_hosts=check.trusted,
            client_factory=lambda: _Client(check),
            password=None, password_auth=False, kbdint_auth=False,
            gss_kex=False, gss_auth=False,
            x509_trusted_certs=None, x509_trusted_cert_paths=None,
            ignore_encrypted=True,
            connect_timeout=min(timeout, opts.connect_timeout),
            keepalive_interval=opts.keepalive_interval,
            keepalive_count_max=DEFAULT_KEEPALIVE_COUNT_MAX,
            config=[str(opts.ssh_config)] if opts.ssh_config else (),
            encryption_algs=CIPHERS,
        )
        if address.port:
            kwargs["port"] = address.port
        if address.user:
            kwargs["username"] = address.user
        if opts.identity_file:
            kwargs["client_keys"] = [str(opts.identity_file)]
        conn: asyncssh.SSHClientConnection | None = None
        error: Exception | None = None
        try:
            conn = await asyncio.wait_for(asyncssh.connect(address.host, **kwargs), timeout)
        except Exception as exc:  # translated below; cancellation passes straight through
            error = exc
        if check.decision is not None and check.decision.verdict is kh.Verdict.RECORD and (
                error is None or isinstance(error, asyncssh.PermissionDenied)):
            await self._record(check, known_path, conn)
        if error is None:
            assert conn is not None
            return SshConnection(address, conn)
        raise await self._translate(error, check, address, known_path, timeout) from error

    async def _record(self, check: _HostKeyCheck, path: Path,
                      conn: asyncssh.SSHClientConnection | None) -> None:
        assert check.decision is not None and check.key_b64 is not None
        try:
            again = await asyncio.to_thread(kh.record_host_key, path, check.decision,
                                            check.key_b64)
        except OSError as exc:
            if conn is not None:
                conn.close()
            raise HostKeyError(f"could not record the host key of {check.decision.token} in "
                               f"{path}: {exc}") from exc
        if not again.verdict.accepted:
            if conn is not None:
                conn.close()
            raise HostKeyError(again.message(path))

    async def _translate(self, error: Exception, check: _HostKeyCheck,
                         address: NodeAddress, known_path: Path,
                         timeout: float) -> TransportError:
        where = describe(address)
        if isinstance(error, asyncssh.HostKeyNotVerifiable):
            decision = check.decision
            if decision is not None and not decision.verdict.accepted:
                return HostKeyError(f"{where}: {decision.message(known_path)}")
            return HostKeyError(f"{where}: host key not verifiable against {known_path}: "
                                f"{error}")
        if (isinstance(error, asyncssh.DisconnectError | ConnectionError)
                and check.decision is None and check.known_for_host):
            # No key was presented: the server offers none of the recorded key types
            # (asyncssh only asks for those). Fetch the key it does have to tell.
            changed = await self._probe_changed_type(check, known_path)
            if changed is not None:
                return HostKeyError(f"{describe(address)}: {changed}")
        if isinstance(error, asyncssh.PermissionDenied):
            keys = (str(self.options.identity_file) if self.options.identity_file
                    else "the ssh config's IdentityFile / default ~/.ssh/id_* keys")
            return TransportError(f"cannot log in to {where}: authentication failed "
                                  f"({error.reason}); tried {keys} and the SSH agent if "
                                  "running (encrypted keys are used only through the agent; "
                                  "password authentication is never used)")
        if isinstance(error, asyncio.TimeoutError | TimeoutError):
            return TransportError(f"cannot connect to {where}: timed out after "
                                  f"{min(timeout, self.options.connect_timeout):g}s")
        if isinstance(error, ConnectionRefusedError):
            return TransportError(f"cannot connect to {where}: connection refused "
                                  "(is sshd running and listening on that port?)")
        if isinstance(error, FileNotFoundError) and error.filename:
            return TransportError(f"cannot connect to {where}: {error.filename}: "
                                  f"{error.strerror}")
        if isinstance(error, OSError):
            return TransportError(f"cannot connect to {where}: {error.strerror or error}")
        if isinstance(error, asyncssh.DisconnectError):
            return TransportError(f"cannot connect to {where}: {error.reason}")
        if isinstance(error, asyncssh.KeyImportError | ValueError):
            return TransportError(f"cannot connect to {where}: {error}")
        return TransportError(f"cannot connect to {where}: {type(error).__name__}: {error}")

    async def _probe_changed_type(self, check: _HostKeyCheck, known_path: Path) -> str | None:
        """A CHANGED message when the server's key is not among the recorded ones."""
        assert check.looked_up is not None
        host, addr, port = check.looked_up
        try:
            key = await asyncio.wait_for(asyncssh.get_server_host_key(
                addr or host, port or kh.DEFAULT_SSH_PORT, server_host_key_algs="default"), 5)
        except (TimeoutError, asyncssh.Error, OSError):
            return None
        if key is None:
            return None
        blob: bytes = key.public_data
        decision = kh.decide(check.entries, host, addr, port, key.algorithm.decode(), blob,
                             check.policy)
        if decision.verdict.accepted:
            return None
        recorded = ", ".join(sorted({e.key_type for e in check.known_for_host}))
        return (f"the server offers no host key of the recorded type(s) {recorded}. "
                + decision.message(known_path))


class _AgentStream:
    """An `AgentStream` over one SSH session: stdout lines in, stdin out."""

    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._process = process
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0
        self._stderr_task = asyncio.create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        with contextlib.suppress(Exception):
            while chunk := await self._process.stderr.read(65536):
                self._stderr.append(chunk)
                self._stderr_size += len(chunk)
                while self._stderr_size > STDERR_TAIL_BYTES and len(self._stderr) > 1:
                    self._stderr_size -= len(self._stderr.popleft())

    def stderr_tail(self) -> str:
        """The last ~64 KiB the agent wrote to stderr (for diagnosing a dead agent)."""
        return b"".join(self._stderr).decode("utf-8", errors="replace")

    @property
    def exit_status(self) -> int | None:
        """The agent's exit status once it has exited (negative: killed by that signal)."""
        return self._process.returncode

    async def readline(self) -> bytes:
        try:
            line: bytes = await self._process.stdout.readline()
        except (asyncssh.Error, OSError, asyncssh.SignalReceived):
            return b""
        return line

    async def read(self, limit: int) -> bytes:
        try:
            data: bytes = await self._process.stdout.read(limit)
        except (asyncssh.Error, OSError, asyncssh.SignalReceived):
            return b""
        return data

    def write(self, data: bytes) -> None:
        # Like a pipe whose reader is gone: once the channel is closed, data is dropped;
        # the loss shows up as readline() returning b"".
        with contextlib.suppress(asyncssh.Error, OSError):
            self._process.stdin.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            await self._process.stdin.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._process.stdin.write_eof()
        self._process.close()
        self._stderr_task.cancel()

    async def wait_closed(self) -> None:
        await self._process.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_task


@dataclass(eq=False)
class SshConnection(Connection):
    """An open SSH connection to one node."""

    address: NodeAddress
    _conn: asyncssh.SSHClientConnection
    _sftp: asyncssh.SFTPClient | None = None
    _sftp_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _agents: list[_AgentStream] = field(default_factory=list)
    _closed: bool = False

    async def __aenter__(self) -> SshConnection:
        return self

    def _where(self) -> str:
        return describe(self.address)

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"connection to {self._where()} is closed")

    async def run(self, command: str, timeout: float | None = None) -> CommandResult:
        self._check_open()
        try:
            process = await self._conn.create_process(command, encoding="utf-8",
                                                      errors="replace")
        except (asyncssh.Error, OSError) as exc:
            raise TransportError(f"{self._where()}: cannot start {command!r}: {exc}") from exc
        try:
            done = await process.wait(timeout=timeout)
        except asyncssh.TimeoutError as exc:
            with contextlib.suppress(Exception):
                process.kill()
            process.close()
            stderr = str(exc.stderr or "")
            raise CommandError(command, None, f"{stderr}\ntimed out after {timeout:g}s on "
                               f"{self._where()}") from exc
        except (asyncssh.Error, OSError) as exc:
            raise TransportError(f"{self._where()}: {command!r} failed: {exc}") from exc
        if done.returncode is None:
            # sshd always reports an exit status or signal; none means the link broke
            raise TransportError(f"{self._where()}: connection lost while running {command!r}")
        return CommandResult(done.returncode, str(done.stdout or ""), str(done.stderr or ""))

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        self._check_open()
        async with self._sftp_lock:
            if self._sftp is None:
                try:
                    self._sftp = await self._conn.start_sftp_client()
                except (asyncssh.Error, OSError) as exc:
                    raise TransportError(f"{self._where()}: cannot start SFTP "
                                         f"(is the sftp subsystem enabled?): {exc}") from exc
            return self._sftp

    async def put(self, local: Path, remote: str) -> None:
        sftp = await self._sftp_client()
        try:
            parent = posixpath.dirname(remote)
            if parent and parent != "/":
                await sftp.makedirs(parent, exist_ok=True)
            await sftp.put(str(local), remote)
        except (asyncssh.Error, OSError) as exc:
            raise TransportError(f"cannot copy {local} to {self._where()}:{remote}: "
                                 f"{_reason(exc)}") from exc

    async def get(self, remote: str, local: Path) -> None:
        sftp = await self._sftp_client()
        try:
            await asyncio.to_thread(local.parent.mkdir, parents=True, exist_ok=True)
            await sftp.get(remote, str(local))
        except (asyncssh.Error, OSError) as exc:
            raise TransportError(f"cannot copy {self._where()}:{remote} to {local}: "
                                 f"{_reason(exc)}") from exc

    async def start_agent(self, command: str, payload: bytes = b"") -> _AgentStream:
        self._check_open()
        try:
            process = await self._conn.create_process(command, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise TransportError(f"{self._where()}: cannot start agent {command!r}: "
                                 f"{exc}") from exc
        stream = _AgentStream(process)
        self._agents.append(stream)
        if payload:
            stream.write(payload)
        return stream

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for agent in self._agents:
            agent.close()
        if self._sftp is not None:
            self._sftp.exit()
            with contextlib.suppress(Exception):
                await self._sftp.wait_closed()
        self._conn.close()
        with contextlib.suppress(Exception):
            await self._conn.wait_closed()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.SFTPError):
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return str(exc)


__all__: Sequence[str] = ("SshConnection", "SshOptions", "SshTransport", "describe")
