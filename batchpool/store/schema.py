"""The store's schema, as an ordered list of migrations.

`PRAGMA user_version` holds how many migrations a file has had; opening a store applies
the missing ones in one transaction each. Never edit a released migration: append one.

Task rows are created lazily, when a member is first dispatched. Members are dispatched
in position order, so a group's rows are exactly its positions below a cursor (the row
count); members past it are queued without costing a row, and a 1,000,000-task array
is one `groups` row. `rest_state` settles every member past the cursor at once.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE pools (
        name        TEXT PRIMARY KEY,
        provider    TEXT NOT NULL,
        config      TEXT NOT NULL,            -- JSON of the pool's settings
        target      INTEGER,                  -- requested node count (pool resize)
        updated     REAL NOT NULL
    );
    CREATE TABLE nodes (
        pool        TEXT NOT NULL,
        name        TEXT NOT NULL,
        address     TEXT NOT NULL,
        state       TEXT NOT NULL,
        reason      TEXT,
        slots       INTEGER NOT NULL DEFAULT 0,
        running     INTEGER NOT NULL DEFAULT 0,
        load        REAL,
        heartbeat   REAL,
        updated     REAL NOT NULL,
        PRIMARY KEY (pool, name)
    );
    CREATE TABLE jobs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        name        TEXT NOT NULL,
        pool        TEXT NOT NULL,
        spec        TEXT NOT NULL,            -- JSON of the validated JobSpec
        spec_file   TEXT,
        priority    INTEGER NOT NULL,
        state       TEXT NOT NULL,            -- queued | running | succeeded | failed | cancelled
        reason      TEXT,
        submitted   REAL NOT NULL,
        started     REAL,
        finished    REAL,
        owner       TEXT,                     -- "pid@host" of the controller running it
        owner_seen  REAL,                     -- last time the owner said it is alive
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE groups (
        job_id      INTEGER NOT NULL REFERENCES jobs(id),
        group_id    TEXT NOT NULL,
        ordinal     INTEGER NOT NULL,         -- order in the spec
        size        INTEGER NOT NULL,
        rest_state  TEXT,                     -- final state given to undispatched members
        rest_reason TEXT,
        PRIMARY KEY (job_id, group_id)
    ) WITHOUT ROWID;
    CREATE TABLE tasks (
        job_id      INTEGER NOT NULL,
        task_id     TEXT NOT NULL,
        group_id    TEXT NOT NULL,
        position    INTEGER NOT NULL,
        state       TEXT NOT NULL,            -- queued | running | succeeded | failed | cancelled
        attempts    INTEGER NOT NULL DEFAULT 0,   -- attempts counted against max_attempts
        lost        INTEGER NOT NULL DEFAULT 0,   -- attempts lost with their node or controller
        exit_code   INTEGER,
        signal      INTEGER,
        reason      TEXT,
        node        TEXT,
        started     REAL,
        finished    REAL,
        PRIMARY KEY (job_id, task_id)
    ) WITHOUT ROWID;
    CREATE INDEX tasks_by_state ON tasks (job_id, state);
    CREATE TABLE attempts (
        job_id      INTEGER NOT NULL,
        task_id     TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        node        TEXT NOT NULL,
        state       TEXT NOT NULL,            -- running|succeeded|failed|timed_out|cancelled|lost
        started     REAL NOT NULL,
        finished    REAL,
        exit_code   INTEGER,
        signal      INTEGER,
        cpu         REAL,
        dir         TEXT NOT NULL,            -- result dir: stdout, stderr, outputs
        outputs     TEXT,                     -- JSON list of output paths relative to dir
        reason      TEXT,
        PRIMARY KEY (job_id, task_id, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        time        REAL NOT NULL,
        job_id      INTEGER,
        task_id     TEXT,
        kind        TEXT NOT NULL,
        detail      TEXT
    );
    CREATE INDEX events_by_job ON events (job_id, id);
    """,
    # 2: the JSON return value of a Python call task
    """
    ALTER TABLE attempts ADD COLUMN result TEXT;
    """,
    # 3: job schedules (cron), fired by the controller service
    """
    CREATE TABLE schedules (
        name        TEXT PRIMARY KEY,
        cron        TEXT NOT NULL,
        tz          TEXT NOT NULL,
        overlap     TEXT NOT NULL,            -- skip | queue | allow
        pool        TEXT NOT NULL,
        spec        TEXT NOT NULL,            -- the validated spec (JSON), as added
        spec_file   TEXT,
        created     REAL NOT NULL,
        next_run    REAL NOT NULL,
        pending     INTEGER NOT NULL DEFAULT 0,
        last_job    INTEGER
    );
    """,
)
