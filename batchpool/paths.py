"""Where batchpool keeps its state: $BATCHPOOL_HOME, else the user data dir."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def home() -> Path:
    """The state directory (the store, task logs and outputs live here)."""
    explicit = os.environ.get("BATCHPOOL_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    return Path(platformdirs.user_data_dir("batchpool"))


def store_path() -> Path:
    """The SQLite store of this deployment."""
    return home() / "batchpool.db"


def work_root() -> Path:
    """Result directories: work_root()/JOB/TASK/ATTEMPT; also the local pool's workdir."""
    return home() / "work"


def user_config_file() -> Path:
    """The last place batchpool.toml is looked for."""
    return Path(platformdirs.user_config_dir("batchpool")) / "batchpool.toml"
