"""Fixtures of the unit tests that run a real node agent."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_harness import AgentProc, StartAgent

from batchpool.agent.launch import bootstrap_command, bootstrap_payload


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[StartAgent]:
    """Start agents the way the controller does; all are stopped at teardown."""
    started: list[AgentProc] = []

    def start(python: str = sys.executable, python_args: tuple[str, ...] = (),
              heartbeat: float = 0.2, workdir: Path | None = None, hello: bool = True,
              cwd: Path | None = None, env: dict[str, str] | None = None) -> AgentProc:
        wd = workdir or tmp_path / "w"
        command = bootstrap_command(python, str(wd), heartbeat, python_args)
        agent = AgentProc(["/bin/sh", "-c", command], wd, cwd=cwd, env=env)
        started.append(agent)
        agent.write(bootstrap_payload())
        if hello:
            msg = agent.expect("hello")
            agent.agent_pid = msg["pid"]
        return agent

    yield start
    for agent in started:
        agent.cleanup()
