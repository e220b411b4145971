"""Host key policy over OpenSSH `known_hosts` files.

Everything here except `read_entries` and `record_host_key` is pure: parse the file's
text, find the entries that name a host, and decide what to do with the key a server
presented. The SSH transport feeds the decision into asyncssh; the unit tests feed it
strings.

Policies (there is deliberately no policy that skips verification):

* ``strict``      the key must already be in known_hosts; anything else is refused.
* ``accept-new``  a host with *no* entry is trusted on first contact and its key is
                  recorded (OpenSSH format, ``[host]:port`` for ports other than 22);
                  a host whose recorded key differs is refused, as with ``strict``.

Matching follows OpenSSH: comma-separated patterns with ``*``/``?`` wildcards and
``!`` negation, hashed names (``|1|salt|hash``), ``[host]:port`` tokens for ports
other than 22 (no fall-back to the port-less entry), case-insensitive names, and
the ``@revoked`` / ``@cert-authority`` markers. A host matches an entry by its name
or by its IP address.
"""

from __future__ import annotations

import base64
import binascii
import enum
import fcntl
import hashlib
import hmac
import os
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HostKeyPolicy = Literal["strict", "accept-new"]
HOST_KEY_POLICIES: tuple[HostKeyPolicy, ...] = ("strict", "accept-new")
DEFAULT_SSH_PORT = 22

_MARKERS = ("cert-authority", "revoked")


@dataclass(frozen=True)
class KnownHostEntry:
    """One key line of a known_hosts file."""

    line_no: int
    patterns: tuple[str, ...]
    key_type: str
    key_b64: str
    marker: str | None = None
    comment: str = ""

    @property
    def key_blob(self) -> bytes | None:
        """The decoded public key, or None when the base64 is broken."""
        try:
            return base64.b64decode(self.key_b64, validate=True)
        except (binascii.Error, ValueError):
            return None

    @property
    def fingerprint(self) -> str:
        blob = self.key_blob
        return fingerprint(blob) if blob is not None else "(unreadable key)"


def fingerprint(key_blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob: ``SHA256:base64-no-padding``."""
    digest = hashlib.sha256(key_blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_token(host: str, port: int | None) -> str:
    """How OpenSSH names `host` in known_hosts: ``host`` on port 22, else ``[host]:port``."""
    if port is None or port == DEFAULT_SSH_PORT:
        return host
    return f"[{host}]:{port}"


def parse_known_hosts(text: str) -> list[KnownHostEntry]:
    """The key entries in known_hosts `text`; comments, blanks and broken lines are skipped."""
    entries: list[KnownHostEntry] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker: str | None = None
        if fields[0].startswith("@"):
            marker = fields[0][1:]
            fields = fields[1:]
            if marker not in _MARKERS:
                continue
        if len(fields) < 3:
            continue
        patterns = tuple(p for p in fields[0].split(",") if p)
        entries.append(KnownHostEntry(
            line_no=line_no, patterns=patterns, key_type=fields[1], key_b64=fields[2],
            marker=marker, comment=" ".join(fields[3:])))
    return entries


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _hashed_matches(pattern: str, token: str) -> bool:
    # |1|base64(salt)|base64(HMAC-SHA1(salt, token))
    try:
        _, magic, salt_b64, hash_b64 = pattern.split("|")
        salt = base64.b64decode(salt_b64, validate=True)
        wanted = base64.b64decode(hash_b64, validate=True)
    except (ValueError, binascii.Error):
        return False
    if magic != "1":
        return False
    return hmac.compare_digest(hmac.new(salt, token.encode(), hashlib.sha1).digest(), wanted)


def _pattern_matches(pattern: str, token: str) -> bool:
    if pattern.startswith("|"):
        return _hashed_matches(pattern, token)
    return _glob_to_regex(pattern).fullmatch(token) is not None


def patterns_match(patterns: Iterable[str], tokens: Sequence[str]) -> bool:
    """Whether a host pattern list names any of `tokens` (OpenSSH semantics: a matching
    negated pattern ``!pat`` vetoes the whole list)."""
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if any(_pattern_matches(body, token) for token in tokens):
            if negated:
                return False
            matched = True
    return matched


def host_tokens(host: str, addr: str | None, port: int | None) -> tuple[str, ...]:
    """The known_hosts names under which a server at host/addr/port is looked up."""
    tokens = [host_token(host, port)] if host else []
    if addr and addr != host:
        tokens.append(host_token(addr, port))
    return tuple(tokens)


def entries_for(entries: Iterable[KnownHostEntry], host: str, addr: str | None,
                port: int | None) -> list[KnownHostEntry]:
    """The entries (of any marker) that apply to the server at host/addr/port."""
    tokens = host_tokens(host, addr, port)
    return [e for e in entries if patterns_match(e.patterns, tokens)]


class Verdict(enum.StrEnum):
    ACCEPT = "accept"            # the key is recorded for this host
    RECORD = "record"            # unknown host under accept-new: trust it and record the key
    UNKNOWN = "unknown"          # refused: no entry for this host (strict)
    CHANGED = "changed"          # refused: the host has entries, none with this key
    REVOKED = "revoked"          # refused: the key is marked @revoked

    @property
    def accepted(self) -> bool:
        return self in (Verdict.ACCEPT, Verdict.RECORD)


@dataclass(frozen=True)
class Decision:
    """What to do with the key a server presented, and why."""

    verdict: Verdict
    host: str                    # the host name as it will be recorded
    port: int | None
    key_type: str
    key_fingerprint: str
    known: tuple[KnownHostEntry, ...] = ()   # the host's existing plain-key entries

    @property
    def token(self) -> str:
        return host_token(self.host, self.port)

    def message(self, known_hosts: Path | str) -> str:
        """A refusal message naming the host, the fingerprint and the fix."""
        path = str(known_hosts)
        qpath = shlex.quote(path)
        port = self.port or DEFAULT_SSH_PORT
        scan = f"ssh-keyscan -p {port} {shlex.quote(self.host)} >> {qpath}"
        check = ("check the fingerprint with the node's administrator "
                 "(on the node: `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`)")
        presented = f"{self.key_type} key {self.key_fingerprint}"
        if self.verdict is Verdict.UNKNOWN:
            return (f"host key for {self.token} is unknown: the server presented {presented}, "
                    f"which is not in {path}. To trust it, {check}, then run "
                    f"`{scan}`; or set host_key_policy = \"accept-new\" for this pool to "
                    f"record keys on first contact.")
        if self.verdict is Verdict.CHANGED:
            recorded = "; ".join(f"line {e.line_no}: {e.key_type} {e.fingerprint}"
                                 for e in self.known) or "other keys"
            remove = f"ssh-keygen -R {shlex.quote(self.token)} -f {qpath}"
            return (f"host key for {self.token} has CHANGED: the server presented {presented}, "
                    f"but {path} records {recorded}. This can be a man-in-the-middle attack, "
                    f"or the node was reinstalled. If you are sure the change is legitimate, "
                    f"{check}, remove the old entry with `{remove}` and add the new key with "
                    f"`{scan}`. (accept-new never replaces a recorded key.)")
        if self.verdict is Verdict.REVOKED:
            return (f"host key for {self.token} is revoked: the server presented {presented}, "
                    f"which {path} marks @revoked. Refusing to connect.")
        return f"host key for {self.token} ({presented}) is trusted"


def decide(entries: Iterable[KnownHostEntry], host: str, addr: str | None, port: int | None,
           key_type: str, key_blob: bytes, policy: HostKeyPolicy) -> Decision:
    """Decide about `key_blob` presented by the server at host/addr/port."""
    if policy not in HOST_KEY_POLICIES:
        raise ValueError(f"unknown host_key_policy {policy!r}; expected one of "
                         f"{', '.join(HOST_KEY_POLICIES)}")
    applicable = entries_for(entries, host, addr, port)

    def same_key(entry: KnownHostEntry) -> bool:
        return entry.key_type == key_type and entry.key_blob == key_blob

    plain = tuple(e for e in applicable if e.marker is None)
    fp = fingerprint(key_blob)

    def verdict(v: Verdict) -> Decision:
        return Decision(v, host, port, key_type, fp, plain)

    if any(e.marker == "revoked" and same_key(e) for e in applicable):
        return verdict(Verdict.REVOKED)
    if any(same_key(e) for e in plain):
        return verdict(Verdict.ACCEPT)
    if plain:
        return verdict(Verdict.CHANGED)
    if policy == "accept-new":
        return verdict(Verdict.RECORD)
    return verdict(Verdict.UNKNOWN)


def format_entry(host: str, port: int | None, key_type: str, key_b64: str) -> str:
    """One known_hosts line (with newline) for host/port."""
    return f"{host_token(host, port)} {key_type} {key_b64}\n"


# --- the two functions that touch the file ------------------------------------------

def read_entries(path: Path) -> list[KnownHostEntry]:
    """Parse the known_hosts file at `path`; a missing file has no entries."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return parse_known_hosts(text)


def record_host_key(path: Path, decision: Decision, key_b64: str) -> Decision:
    """Append the key of a RECORD decision to `path`, under an exclusive lock.

    The file is re-read under the lock, so concurrent first contacts record the key
    once; if another writer recorded a *different* key meanwhile, the returned decision
    is CHANGED and nothing is written.
    """
    if decision.verdict is not Verdict.RECORD:
        raise ValueError(f"only a RECORD decision is recorded, not {decision.verdict}")
    blob = base64.b64decode(key_b64)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8", errors="replace") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            text = handle.read()
            again = decide(parse_known_hosts(text), decision.host, None, decision.port,
                           decision.key_type, blob, "accept-new")
            if again.verdict is Verdict.RECORD:
                if text and not text.endswith("\n"):
                    handle.write("\n")
                handle.write(format_entry(decision.host, decision.port, decision.key_type,
                                          key_b64))
                handle.flush()
                os.fsync(handle.fileno())
            return again
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
