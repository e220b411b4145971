"""batchpool.toml: typed, immutable, validated on load.

Looked for in: --config, $BATCHPOOL_CONFIG, ./batchpool.toml, the user config dir.
With no file at all the pool `local` (this machine, one slot per core) exists and is
the default.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from batchpool import defaults, paths
from batchpool.durations import parse_duration
from batchpool.errors import ConfigError


class PoolConfig(BaseModel):
    """One `[pools.NAME]` table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    provider: Literal["static", "command", "local"] = "static"
    hosts: tuple[str, ...] = ()
    slots_per_node: int | Literal["auto"] = Field(default="auto")
    known_hosts: str | None = "~/.ssh/known_hosts"
    host_key_policy: Literal["strict", "accept-new"] = "strict"
    identity_file: str | None = None
    ssh_config: str | None = None
    python: str = defaults.NODE_PYTHON
    workdir: str = defaults.NODE_WORKDIR
    start_task: str | None = None
    min_nodes: int = Field(default=0, ge=0)
    max_nodes: int | None = Field(default=None, ge=0)
    idle_timeout: float = 300.0
    heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT
    names: str | None = None
    resume_command: str | None = None
    suspend_command: str | None = None

    @field_validator("slots_per_node")
    @classmethod
    def _positive_slots(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("slots_per_node must be >= 1 or \"auto\"")
        return value

    @field_validator("idle_timeout", "heartbeat_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class Config(BaseModel):
    """The whole configuration, with the built-in `local` pool merged in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_pool: str = defaults.DEFAULT_POOL
    pools: dict[str, PoolConfig] = Field(default_factory=dict)
    source: str | None = None

    def pool(self, name: str | None) -> PoolConfig:
        """The named pool (or the default); ConfigError naming the known pools if absent."""
        wanted = name or self.default_pool
        if wanted in self.pools:
            return self.pools[wanted]
        known = ", ".join(sorted(self.pools)) or "none"
        where = f" in {self.source}" if self.source else ""
        raise ConfigError(f"no pool named {wanted!r}{where} (known pools: {known})")


def local_pool() -> PoolConfig:
    """This machine as a one-node pool, one slot per core, working under $BATCHPOOL_HOME."""
    return PoolConfig(name="local", provider="local", hosts=("localhost",),
                      workdir=str(paths.work_root()), min_nodes=1, max_nodes=1)


def find_config(explicit: str | Path | None = None) -> Path | None:
    """The config file in effect, or None when there is none."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    env = os.environ.get("BATCHPOOL_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"$BATCHPOOL_CONFIG names {path}, which does not exist")
        return path
    for candidate in (Path("batchpool.toml"), paths.user_config_file()):
        if candidate.is_file():
            return candidate
    return None


def load_config(explicit: str | Path | None = None) -> Config:
    """Read and validate the config in effect (or the built-in one).

    The pool `dev` of a running `batchpool dev-cluster` is always available too,
    unless the config defines its own `dev`.
    """
    config = _load_file_config(explicit)
    dev_file = paths.home() / "dev-cluster" / "batchpool.toml"
    if "dev" in config.pools or not dev_file.is_file() or (
            config.source and Path(config.source).resolve() == dev_file.resolve()):
        return config
    dev = _load_file_config(dev_file).pools.get("dev")
    if dev is None:
        return config
    return config.model_copy(update={"pools": {**config.pools, "dev": dev}})


def _load_file_config(explicit: str | Path | None) -> Config:
    path = find_config(explicit)
    if path is None:
        return Config(pools={"local": local_pool()})
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(exc), file=str(path), line=_toml_error_line(exc)) from None
    pools_data = data.get("pools", {})
    if not isinstance(pools_data, dict):
        raise ConfigError("must be a table of pools", file=str(path), field="pools",
                          line=_line_of(text, "pools"))
    pools = {"local": local_pool()}
    for name, table in pools_data.items():
        if not isinstance(table, dict):
            raise ConfigError("must be a table", file=str(path), field=f"pools.{name}",
                              line=_line_of(text, f"pools.{name}"))
        try:
            pools[name] = PoolConfig(name=name, **table)
        except ValidationError as exc:
            raise _config_error(exc, path, text, f"pools.{name}") from None
    rest = {k: v for k, v in data.items() if k != "pools"}
    try:
        return Config(pools=pools, source=str(path), **rest)
    except ValidationError as exc:
        raise _config_error(exc, path, text, "") from None


def _config_error(exc: ValidationError, path: Path, text: str, prefix: str) -> ConfigError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
    field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown setting"
    return ConfigError(message, file=str(path), line=_line_of(text, field), field=field)


def _toml_error_line(exc: tomllib.TOMLDecodeError) -> int | None:
    import re

    match = re.search(r"line (\d+)", str(exc))
    return int(match.group(1)) if match else None


def _line_of(text: str, field: str) -> int | None:
    """The line where `field` (a dotted path like pools.lab.hosts) is set, if found."""
    parts = field.split(".")
    table, key = ".".join(parts[:-1]), parts[-1]
    current = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("["):
            current = line.strip("[] ")
            if current == field:
                return number
            continue
        name = line.split("=", 1)[0].strip().strip('"')
        if "=" in line and name == key and current == table:
            return number
    return None
