-- agent-swarm registry, schema version 5: warm clones (issue 10).
-- * A task resumed from a warm template records the template's directory (its disk's backing
--   file and the RAM file it maps live there): the template stays while a task uses it.
-- * The journal knows `warm` (saving a warm template) and `fork` (branching a running task).
ALTER TABLE tasks ADD COLUMN warm_from TEXT NOT NULL DEFAULT '';

CREATE TABLE journal_new (
    id          INTEGER PRIMARY KEY,
    op          TEXT NOT NULL CHECK (op IN ('create', 'delete', 'seal', 'restore', 'gc', 'warm',
                                            'fork', 'doctor')),
    kind        TEXT NOT NULL CHECK (kind IN ('project', 'task')),
    name        TEXT NOT NULL,
    step        TEXT NOT NULL DEFAULT 'begin',
    detail      TEXT NOT NULL DEFAULT '',
    pid         INTEGER NOT NULL,
    pid_start   TEXT NOT NULL,
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    provider    TEXT NOT NULL DEFAULT '',
    UNIQUE (kind, name)
);
INSERT INTO journal_new (id, op, kind, name, step, detail, pid, pid_start, started_at, provider)
    SELECT id, op, kind, name, step, detail, pid, pid_start, started_at, provider FROM journal;
DROP TABLE journal;
ALTER TABLE journal_new RENAME TO journal;
