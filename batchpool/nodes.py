"""Node rows from the store, as the CLI shows them."""

from __future__ import annotations

import time
from typing import Any

from batchpool.durations import format_duration
from batchpool.store import Store


def node_rows(store: Store, pool: str | None = None) -> list[dict[str, Any]]:
    """The last recorded state of each node (of one pool, or all)."""
    query = ("SELECT pool, name, address, state, reason, slots, running, load, heartbeat,"
             " updated FROM nodes")
    params: tuple[str, ...] = ()
    if pool:
        query += " WHERE pool=?"
        params = (pool,)
    now = time.time()
    with store.reading() as db:
        rows = db.execute(query + " ORDER BY pool, name", params).fetchall()
    return [{"pool": r[0], "name": r[1], "address": r[2], "state": r[3], "reason": r[4],
             "slots": r[5], "running": r[6], "load": r[7], "heartbeat": r[8],
             "heartbeat_age": format_duration(now - r[8]) + " ago" if r[8] else "",
             "updated": r[9]} for r in rows]
