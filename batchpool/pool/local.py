"""The local pool's one node: its settings, and starting its agent ahead of time.

Both `plan_pool` and `batchpool run`'s early start take the settings from here, so the
agent started early is started with exactly the command the session will ask for.
"""

from __future__ import annotations

import sys

from batchpool import defaults, paths
from batchpool.agent.launch import bootstrap_payload
from batchpool.pool.session import NodeSettings, agent_command
from batchpool.transport import local


def local_settings(python: str = defaults.NODE_PYTHON, slots: int | None = None,
                   start_task: str | None = None) -> NodeSettings:
    """How the local node is brought up; the default Python is this one."""
    root = paths.work_root()
    return NodeSettings(python=sys.executable if python == defaults.NODE_PYTHON else python,
                        workdir=str(root), slots=slots, start_task=start_task,
                        heartbeat=defaults.HEARTBEAT_INTERVAL, local_results=root)


def start_agent_early() -> None:
    """Start the default local pool's agent now, before the controller is imported.

    Costs nothing if the pool turns out to be another one (see `stop_early_agents`),
    and saves `batchpool run` the agent's start-up (~60 ms) when it is the local pool.
    """
    local.start_agent_early(agent_command(local_settings()), bootstrap_payload())


def stop_early_agents() -> None:
    """Stop agents started early that no pool will use."""
    local.stop_early_agents()
