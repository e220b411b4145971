"""The local pool's one node: its settings, and starting its agent ahead of time.

Both `plan_pool` and `batchpool run`'s early start take the settings from here, so the
agent started early is started with exactly the command the session will ask for.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from batchpool import defaults, paths
from batchpool.agent.launch import bootstrap_payload, encode, worker_source
from batchpool.pool.session import NodeSettings, agent_command
from batchpool.transport import local

if TYPE_CHECKING:
    from batchpool.config import PoolConfig


def local_settings(python: str = defaults.NODE_PYTHON, slots: int | None = None,
                   start_task: str | None = None) -> NodeSettings:
    """How the local node is brought up; the default Python is this one."""
    root = paths.work_root()
    return NodeSettings(python=sys.executable if python == defaults.NODE_PYTHON else python,
                        workdir=str(root), slots=slots, start_task=start_task,
                        heartbeat=defaults.HEARTBEAT_INTERVAL, local_results=root)


def start_agent_early() -> None:
    """Start the default local pool's agent now, before the controller is imported.

    It also starts warm workers at once (one per core, at most EARLY_WARM_WORKERS): the
    job is not loaded yet, but if it has Python calls their interpreters are then up
    before the first call; the session then tells the agent how many to keep (none for
    a job without calls). This saves `batchpool run` the agent's start-up (~60 ms) and a
    worker's (~45 ms) when the pool is the default `local`; `settle_early_agent` stops it
    as soon as the pool turns out to be another one.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    warm = min(cores, defaults.EARLY_WARM_WORKERS)
    local.start_agent_early(agent_command(local_settings()), bootstrap_payload(),
                            encode({"op": "worker", "source": worker_source(), "warm": warm}))


def settle_early_agent(pool: PoolConfig) -> None:
    """Stop the agent started early unless `pool` will take it over: a `local` pool
    whose agent is started with the same command (the same Python)."""
    keep = agent_command(local_settings(pool.python)) if pool.provider == "local" else None
    local.stop_early_agents(keep)
