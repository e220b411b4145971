"""Shared fixtures: a private BATCHPOOL_HOME and the real CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import Batchpool


@pytest.fixture
def bp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Batchpool:
    home = tmp_path / "home"
    monkeypatch.setenv("BATCHPOOL_HOME", str(home))
    monkeypatch.delenv("BATCHPOOL_CONFIG", raising=False)
    return Batchpool(home=home, cwd=tmp_path)
