"""batchpool.toml: typed, immutable, validated on load.

Looked for in: --config, $BATCHPOOL_CONFIG, ./batchpool.toml, the user config dir.
With no file at all the pool `local` (this machine, one slot per core) exists and is
the default.

Errors read like spec errors (``batchpool.toml:4: pools.lab.hosts[1]: message``): the
line comes from the same TOML scanner (`spec/locate.py`), and pydantic's messages are
reworded by the same function as the spec's (`spec/load.py`).
"""

from __future__ import annotations

import contextlib
import difflib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from batchpool import defaults, paths
from batchpool.durations import parse_duration
from batchpool.errors import ConfigError, SpecError
from batchpool.spec.load import existing_prefix, parse_toml, pydantic_message
from batchpool.spec.locate import FieldPath, LineMap, format_path, line_for, toml_lines

#: Providers that may be named in a config but cannot run yet.
NOT_IMPLEMENTED_PROVIDERS = frozenset({"command"})


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

    # The file that defined this pool (None: built in), so that errors found when the
    # pool is used can still point at it; the merged `dev` pool comes from another file.
    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        """The config file this pool was read from, or None for the built-in `local`."""
        return self._source

    @field_validator("provider")
    @classmethod
    def _implemented(cls, value: str) -> str:
        # Refused here rather than when a job runs: by then the job would be recorded.
        if value in NOT_IMPLEMENTED_PROVIDERS:
            raise ValueError(f'provider "{value}" is not implemented yet; use "static" '
                             '(a fixed list of SSH hosts) or "local" (this machine)')
        return value

    @field_validator("slots_per_node", mode="before")
    @classmethod
    def _slots(cls, value: Any) -> Any:
        # One message for the whole union instead of pydantic's one per member.
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                               and value >= 1):
            return value
        raise ValueError(f'must be an integer >= 1 or "auto", got {value!r}')

    @field_validator("idle_timeout", "heartbeat_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        if not isinstance(value, str | int | float):
            raise ValueError(f"expected a duration like '90s' or '5m', or seconds, "
                             f"got {type(value).__name__}")
        return parse_duration(value)


class Config(BaseModel):
    """The whole configuration, with the built-in `local` pool merged in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_pool: str = defaults.DEFAULT_POOL
    pools: dict[str, PoolConfig] = Field(default_factory=dict)

    # Private, so that a `source = ...` line in the file is an unknown setting.
    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        """The config file in effect, or None when there is none."""
        return self._source

    def pool(self, name: str | None) -> PoolConfig:
        """The named pool (or the default); ConfigError naming the known pools if absent."""
        wanted = name or self.default_pool
        if wanted in self.pools:
            return self.pools[wanted]
        where = f" in {self.source}" if self.source else ""
        raise ConfigError(f"no pool named {wanted!r}{where} (known pools: {self.known()})")

    def known(self) -> str:
        """The pool names, for messages."""
        return ", ".join(sorted(self.pools)) or "none"


def local_pool() -> PoolConfig:
    """This machine as a one-node pool, one slot per core, working under $BATCHPOOL_HOME."""
    return PoolConfig(name="local", provider="local", hosts=("localhost",),
                      workdir=str(paths.work_root()), min_nodes=1, max_nodes=1)


def find_config(explicit: str | Path | None = None) -> Path | None:
    """The config file in effect, or None when there is none."""
    if explicit:
        path = Path(explicit).expanduser()
        _must_be_file(path, f"config file {path}")
        return path
    env = os.environ.get("BATCHPOOL_CONFIG")
    if env:
        path = Path(env).expanduser()
        _must_be_file(path, f"$BATCHPOOL_CONFIG names {path}, which")
        return path
    for candidate in (Path("batchpool.toml"), paths.user_config_file()):
        if candidate.is_file():
            return candidate
    return None


def _must_be_file(path: Path, subject: str) -> None:
    if path.is_dir():
        raise ConfigError(f"{subject} is a directory, not a file")
    if not path.is_file():
        raise ConfigError(f"{subject} does not exist")


def load_config(explicit: str | Path | None = None) -> Config:
    """Read and validate the config in effect (or the built-in one).

    The pool `dev` of a running `batchpool dev-cluster` is always available too,
    unless the config defines its own `dev`. `default_pool` must name a pool.
    """
    config = _merge_dev(_load_file_config(explicit))
    if config.default_pool not in config.pools:
        raise config_error(config.source, ("default_pool",),
                           f"no pool named {config.default_pool!r} (known pools: "
                           f"{config.known()})")
    return config


def _merge_dev(config: Config) -> Config:
    dev_file = paths.home() / "dev-cluster" / "batchpool.toml"
    if "dev" in config.pools or not dev_file.is_file() or (
            config.source and Path(config.source).resolve() == dev_file.resolve()):
        return config
    dev = _load_file_config(dev_file).pools.get("dev")
    if dev is None:
        return config
    merged = config.model_copy(update={"pools": {**config.pools, "dev": dev}})
    merged._source = config.source
    return merged


def _load_file_config(explicit: str | Path | None) -> Config:
    path = find_config(explicit)
    if path is None:
        return Config(pools={"local": local_pool()})
    try:
        text = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file: {exc}", file=str(path)) from None
    return parse_config_text(text, str(path))


def parse_config_text(text: str, filename: str) -> Config:
    """Validate the TOML `text` of a config file; `filename` is used in errors only."""
    try:
        data = parse_toml(text, filename)
    except SpecError as exc:
        raise ConfigError(exc.message, file=filename, line=exc.line) from None
    lines = toml_lines(text)
    pools_data = data.pop("pools", {})
    if not isinstance(pools_data, dict):
        raise _located(filename, lines, ("pools",),
                       "expected a table of pools ([pools.NAME]), got "
                       f"{type(pools_data).__name__}")
    problems: list[ConfigError] = []  # like spec errors: the one nearest the top wins
    pools = {"local": local_pool()}
    for name, table in pools_data.items():
        where: FieldPath = ("pools", name)
        if not isinstance(table, dict):
            problems.append(_located(filename, lines, where, "expected a table of settings "
                                     f"([pools.{name}]), got {type(table).__name__}"))
        elif "name" in table:  # the table's own name is the pool's name
            problems.append(_located(filename, lines, (*where, "name"), "unknown setting: "
                                     "a pool is named by its table, [pools.NAME]"))
        else:
            try:
                pool = PoolConfig.model_validate({**table, "name": name})
            except ValidationError as exc:
                problems.append(_validation_error(exc, filename, lines, where, table,
                                                  PoolConfig))
                continue
            pool._source = filename
            pools[name] = pool
    try:
        config = Config.model_validate({**data, "pools": pools})
    except ValidationError as exc:
        problems.append(_validation_error(exc, filename, lines, (), data, Config))
    if problems:
        raise min(problems, key=lambda problem: problem.line or 0)
    config._source = filename
    return config


def config_error(file: str | None, path: FieldPath, message: str) -> ConfigError:
    """A ConfigError at `path` (("pools", "lab", "hosts", 1)) of `file`, with its line.

    For problems found after loading (e.g. when a pool is planned): the file is read
    again to find the line, and a file that cannot be read just gives no line.
    """
    lines: LineMap = {}
    if file:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            lines = toml_lines(Path(file).read_text(encoding="utf-8-sig").replace("\r\n", "\n"))
    return _located(file, lines, path, message)


def _located(file: str | None, lines: LineMap, path: FieldPath, message: str) -> ConfigError:
    line = line_for(lines, path) if file and lines and path else None
    return ConfigError(message, file=file, line=line, field=format_path(path) or None)


def _validation_error(exc: ValidationError, file: str, lines: LineMap, prefix: FieldPath,
                      data: Any, model: type[BaseModel]) -> ConfigError:
    """The pydantic problem nearest the top of the file, worded like a spec error."""
    problems: list[tuple[int, FieldPath, str]] = []
    for error in exc.errors(include_url=False):
        loc: FieldPath = tuple(error["loc"])
        if error["type"] != "missing":
            loc = existing_prefix(data, loc)  # drops union tags such as `.int`
        path = (*prefix, *loc)
        if error["type"] == "extra_forbidden":
            message = _unknown_setting(str(loc[-1]) if loc else "", model)
        else:
            message = pydantic_message(error, path)
        problems.append((line_for(lines, path), path, message))
    line, path, message = min(problems, key=lambda problem: problem[0])
    return ConfigError(message, file=file, line=line, field=format_path(path) or None)


def _unknown_setting(name: str, model: type[BaseModel]) -> str:
    allowed = [field for field in model.model_fields if field != "name"]
    close = difflib.get_close_matches(name, allowed, n=1)
    return "unknown setting" + (f" (did you mean {close[0]!r}?)" if close else "")
