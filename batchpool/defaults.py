"""Every default in one place, so that docs/configuration.md can point at one module."""

from __future__ import annotations

#: Pool used when neither the spec, the command line nor the config names one.
DEFAULT_POOL = "local"

#: Attempts per task when a spec says nothing (1 means no retry).
MAX_ATTEMPTS = 3

#: First retry waits this long; each further retry doubles it, up to RETRY_BACKOFF_MAX.
RETRY_BACKOFF = 1.0
RETRY_BACKOFF_MAX = 60.0

#: The node agent sends a heartbeat this often (seconds) ...
HEARTBEAT_INTERVAL = 2.0
#: ... and a node that stays silent this long is unreachable.
HEARTBEAT_TIMEOUT = 10.0

#: Seconds to wait for an SSH connection.
CONNECT_TIMEOUT = 15.0

#: Store writes are grouped into one transaction at most this often (seconds).
STORE_FLUSH_INTERVAL = 0.05

#: Plain (non-terminal) progress lines are printed at most this often (seconds).
PROGRESS_LINE_INTERVAL = 5.0

#: How often a controller refreshes `owner_seen` on the jobs it runs (seconds).
OWNER_HEARTBEAT = 2.0
#: How many times the controller service starts a controller for a job whose controller
#: failed after its nodes were up; then the job fails with the controller's error.
CONTROLLER_ATTEMPTS = 3
#: How often `job wait` and `submit --wait` look at the job (one read of one row).
WAIT_POLL = 0.02
#: How often the controller service looks in the store for submitted jobs (seconds); a
#: pool that is already up takes its new jobs about once a second, from its own loop.
SERVICE_POLL = 1.0
#: A job whose owner has not refreshed `owner_seen` for this long is taken over by
#: `job resume` and ended at once by `job cancel` (Store.claim, Store.finish_unowned);
#: a dead owner process on this host counts at once. Keep it several OWNER_HEARTBEATs.
OWNER_STALE = 10.0

#: Where tasks run on a node, when a pool does not say.
NODE_WORKDIR = "/tmp/batchpool"

#: Python used to start the node agent, when a pool does not say.
NODE_PYTHON = "python3"

#: Each node is sent enough tasks beyond its slots to keep every slot busy for about
#: this long (seconds), judged by the moving average of attempt durations, and at most
#: PREFETCH_MAX x its slots in all. The extra tasks wait on the node, so the round trip
#: to the controller never idles a slot between short tasks, and the agent can report
#: several results at once; tasks that take longer than this are never sent ahead, so
#: none waits behind another while a slot elsewhere is free.
PREFETCH_AHEAD = 0.05
PREFETCH_MAX = 64

#: Warm workers `batchpool run` asks its early local agent for, before it knows whether
#: the job has Python calls (one per core, at most this many; see pool/local.py).
EARLY_WARM_WORKERS = 4

#: An agent sends an attempt's stdout, stderr and output files of at most this many
#: bytes (each) back in its `done` message, instead of the controller fetching each
#: over SFTP; bigger ones are fetched.
INLINE_BYTES = 64 * 1024
