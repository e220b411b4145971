"""The node state machine: states, their meaning, and which moves are allowed."""

from __future__ import annotations

from enum import StrEnum


class NodeState(StrEnum):
    CONNECTING = "connecting"    # opening the connection, starting the agent
    STARTING = "starting"        # running the pool's start task
    IDLE = "idle"                # ready, no task running
    RUNNING = "running"          # ready, at least one task running
    UNREACHABLE = "unreachable"  # was up, stopped answering (missed heartbeats, link lost)
    UNUSABLE = "unusable"        # cannot be used: refused, wrong key, no python, start task failed
    LEAVING = "leaving"          # being removed from the pool
    OFFLINE = "offline"          # no controller holds it (the controller stopped)


#: States in which a node takes tasks.
READY = frozenset({NodeState.IDLE, NodeState.RUNNING})

#: States a node does not leave by itself.
TERMINAL = frozenset({NodeState.UNUSABLE, NodeState.LEAVING, NodeState.OFFLINE})

_ALLOWED: dict[NodeState, frozenset[NodeState]] = {
    NodeState.CONNECTING: frozenset({NodeState.STARTING, NodeState.IDLE, NodeState.UNUSABLE,
                                     NodeState.UNREACHABLE, NodeState.LEAVING}),
    NodeState.STARTING: frozenset({NodeState.IDLE, NodeState.UNUSABLE, NodeState.UNREACHABLE,
                                   NodeState.LEAVING}),
    NodeState.IDLE: frozenset({NodeState.RUNNING, NodeState.UNREACHABLE, NodeState.LEAVING}),
    NodeState.RUNNING: frozenset({NodeState.IDLE, NodeState.UNREACHABLE, NodeState.LEAVING}),
    NodeState.UNREACHABLE: frozenset({NodeState.CONNECTING, NodeState.LEAVING}),
    NodeState.UNUSABLE: frozenset({NodeState.CONNECTING, NodeState.LEAVING}),
    NodeState.LEAVING: frozenset({NodeState.OFFLINE}),
    NodeState.OFFLINE: frozenset({NodeState.CONNECTING}),
}


def can_move(current: NodeState, new: NodeState) -> bool:
    """True when `current` -> `new` is a legal transition (staying put is always legal)."""
    return current == new or new in _ALLOWED[current]
