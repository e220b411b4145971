"""Running the real `batchpool` command in tests, each test with its own state dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Batchpool:
    """The CLI, as a user runs it, with BATCHPOOL_HOME set to a private directory."""

    home: Path
    cwd: Path

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPOOL_")}
        env["BATCHPOOL_HOME"] = str(self.home)
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "batchpool", *args]

    def __call__(self, *args: str, timeout: float = 120,
                 check: bool | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*args), env=self.env, cwd=self.cwd,
                                capture_output=True, text=True, timeout=timeout)
        if check is not None and (result.returncode == 0) != check:
            raise AssertionError(
                f"batchpool {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def json(self, *args: str, timeout: float = 120) -> Any:
        result = self(*args, "--json", timeout=timeout)
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"not JSON (exit {result.returncode}):\n{result.stdout}\n"
                                 f"{result.stderr}") from None

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*args), env=self.env, cwd=self.cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
