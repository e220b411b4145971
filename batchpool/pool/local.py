"""The local pool's one node: its settings, and starting its agent ahead of time.

Both `plan_pool` and `batchpool run`'s early start take the settings from here, so the
agent started early is started with exactly the command the session will ask for.
"""

from __future__ import annotations

import os
import sys

from batchpool import defaults, paths
from batchpool.agent.launch import bootstrap_payload, encode, worker_source
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

    It also starts a warm worker per core at once: the job is not loaded yet, but if it
    has Python calls their interpreters are then up before the first call (the session
    tells the agent how many to keep, none for a job without calls). This saves
    `batchpool run` the agent's start-up (~60 ms) and a worker's (~45 ms) when the pool
    is `local`; costs nothing if it turns out to be another one (`stop_early_agents`).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    local.start_agent_early(agent_command(local_settings()), bootstrap_payload(),
                            encode({"op": "worker", "source": worker_source(), "warm": cores}))


def stop_early_agents() -> None:
    """Stop agents started early that no pool will use."""
    local.stop_early_agents()
