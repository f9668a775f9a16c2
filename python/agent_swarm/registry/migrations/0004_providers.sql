-- agent-swarm: foreign_keys=off
-- agent-swarm registry, schema version 4: one core for every provider.
-- * Generations are first-class artefacts: their disk format, the provider and the machine
--   shape they were sealed with, and room for the artefacts of warm clones (a memory image,
--   the template's host key). Existing generations are libvirt qcow2 files.
-- * Journal entries record the VM's provider (recovery must reach a VM whose row is gone).
-- * The CHECKs that only libvirt values passed are relaxed: a network is the provider's word
--   (validated by the provider's declared capabilities), base images may be VHDX, and the
--   journal knows `gc` (journaled as `seal` before, which made doctor suggest sealing again).
-- Tables are rebuilt (SQLite cannot alter a CHECK) with foreign keys off; the migration runner
-- checks `PRAGMA foreign_key_check` before committing.

ALTER TABLE generations ADD COLUMN format TEXT NOT NULL DEFAULT 'qcow2';
ALTER TABLE generations ADD COLUMN provider TEXT NOT NULL DEFAULT 'libvirt';
ALTER TABLE generations ADD COLUMN cpus INTEGER;
ALTER TABLE generations ADD COLUMN memory_mib INTEGER;
ALTER TABLE generations ADD COLUMN disk_gib INTEGER;
ALTER TABLE generations ADD COLUMN memory_image TEXT;
ALTER TABLE generations ADD COLUMN host_key TEXT;
UPDATE generations SET
    cpus = (SELECT cpus FROM projects WHERE projects.name = generations.project),
    memory_mib = (SELECT memory_mib FROM projects WHERE projects.name = generations.project),
    disk_gib = (SELECT disk_gib FROM projects WHERE projects.name = generations.project),
    provider = COALESCE(
        (SELECT provider FROM projects WHERE projects.name = generations.project), 'libvirt');

CREATE TABLE base_images_new (
    name         TEXT PRIMARY KEY,
    path         TEXT NOT NULL,
    format       TEXT NOT NULL CHECK (format IN ('qcow2', 'raw', 'vhdx')),
    virtual_size INTEGER NOT NULL CHECK (virtual_size > 0),
    source       TEXT NOT NULL,
    sha256       TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
INSERT INTO base_images_new SELECT name, path, format, virtual_size, source, sha256, created_at
    FROM base_images;
DROP TABLE base_images;
ALTER TABLE base_images_new RENAME TO base_images;

CREATE TABLE projects_new (
    name        TEXT PRIMARY KEY,
    base_image  TEXT NOT NULL REFERENCES base_images (name) ON DELETE RESTRICT,
    provider    TEXT NOT NULL CHECK (provider <> ''),
    cpus        INTEGER NOT NULL CHECK (cpus > 0),
    memory_mib  INTEGER NOT NULL CHECK (memory_mib >= 256),
    disk_gib    INTEGER NOT NULL CHECK (disk_gib > 0),
    network     TEXT NOT NULL DEFAULT 'user' CHECK (network <> ''),
    host_key    TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    host_access INTEGER NOT NULL DEFAULT 0 CHECK (host_access IN (0, 1))
);
INSERT INTO projects_new SELECT name, base_image, provider, cpus, memory_mib, disk_gib, network,
    host_key, created_at, host_access FROM projects;
DROP TABLE projects;
ALTER TABLE projects_new RENAME TO projects;

CREATE TABLE tasks_new (
    name        TEXT PRIMARY KEY,
    project     TEXT NOT NULL REFERENCES projects (name) ON DELETE RESTRICT,
    generation  INTEGER NOT NULL,
    provider    TEXT NOT NULL CHECK (provider <> ''),
    cpus        INTEGER NOT NULL CHECK (cpus > 0),
    memory_mib  INTEGER NOT NULL CHECK (memory_mib >= 256),
    network     TEXT NOT NULL DEFAULT 'user' CHECK (network <> ''),
    host_key    TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    host_access INTEGER NOT NULL DEFAULT 0 CHECK (host_access IN (0, 1)),
    FOREIGN KEY (project, generation) REFERENCES generations (project, generation)
        ON DELETE RESTRICT
);
INSERT INTO tasks_new SELECT name, project, generation, provider, cpus, memory_mib, network,
    host_key, created_at, host_access FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;
CREATE INDEX tasks_by_project ON tasks (project, generation);

CREATE TABLE journal_new (
    id          INTEGER PRIMARY KEY,
    op          TEXT NOT NULL CHECK (op IN ('create', 'delete', 'seal', 'restore', 'gc', 'doctor')),
    kind        TEXT NOT NULL CHECK (kind IN ('project', 'task')),
    name        TEXT NOT NULL,
    step        TEXT NOT NULL DEFAULT 'begin',
    detail      TEXT NOT NULL DEFAULT '',
    pid         INTEGER NOT NULL,
    pid_start   TEXT NOT NULL,
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    provider    TEXT NOT NULL DEFAULT '',   -- the VM's provider, for recovery without a row
    UNIQUE (kind, name)
);
INSERT INTO journal_new (id, op, kind, name, step, detail, pid, pid_start, started_at)
    SELECT id, op, kind, name, step, detail, pid, pid_start, started_at FROM journal;
DROP TABLE journal;
ALTER TABLE journal_new RENAME TO journal;
