-- agent-swarm registry, schema version 2: the operations journal.
-- create/delete/seal/restore record their intent here before touching anything, advance
-- `step` as they go and delete the row when done. A row whose process is gone is an
-- interrupted operation: `agent-swarm doctor` explains it and `doctor --fix` completes or
-- undoes it. One operation per VM at a time (the UNIQUE constraint is the per-VM lock; a dead
-- owner makes it stale, never blocking forever).
CREATE TABLE journal (
    id          INTEGER PRIMARY KEY,
    op          TEXT NOT NULL CHECK (op IN ('create', 'delete', 'seal', 'restore', 'doctor')),
    kind        TEXT NOT NULL CHECK (kind IN ('project', 'task')),
    name        TEXT NOT NULL,
    step        TEXT NOT NULL DEFAULT 'begin',
    detail      TEXT NOT NULL DEFAULT '',
    pid         INTEGER NOT NULL,
    pid_start   TEXT NOT NULL,      -- the process's start time: a reused PID is not the owner
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (kind, name)
);
