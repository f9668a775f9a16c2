-- agent-swarm registry, schema version 1.
-- Identity and desired configuration only: runtime state (running/stopped, IP, disk use) is
-- always read from the provider, never stored here.

CREATE TABLE base_images (
    name         TEXT PRIMARY KEY,
    path         TEXT NOT NULL,
    format       TEXT NOT NULL CHECK (format IN ('qcow2', 'raw')),
    virtual_size INTEGER NOT NULL CHECK (virtual_size > 0),
    source       TEXT NOT NULL,            -- 'url:…', 'file:…' or 'build:debian-12'
    sha256       TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE projects (
    name        TEXT PRIMARY KEY,
    base_image  TEXT NOT NULL REFERENCES base_images (name) ON DELETE RESTRICT,
    provider    TEXT NOT NULL,
    cpus        INTEGER NOT NULL CHECK (cpus > 0),
    memory_mib  INTEGER NOT NULL CHECK (memory_mib >= 256),
    disk_gib    INTEGER NOT NULL CHECK (disk_gib > 0),
    network     TEXT NOT NULL DEFAULT 'user' CHECK (network IN ('user', 'nat')),
    host_key    TEXT NOT NULL DEFAULT '',  -- pinned SSH host public key (OpenSSH format)
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Sealed, read-only template disks of a project. Tasks pin the generation they were cloned
-- from, so a generation cannot be deleted while a task uses it.
CREATE TABLE generations (
    project     TEXT NOT NULL REFERENCES projects (name) ON DELETE CASCADE,
    generation  INTEGER NOT NULL CHECK (generation > 0),
    path        TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (project, generation)
);

CREATE TABLE tasks (
    name        TEXT PRIMARY KEY,
    project     TEXT NOT NULL REFERENCES projects (name) ON DELETE RESTRICT,
    generation  INTEGER NOT NULL,
    provider    TEXT NOT NULL,
    cpus        INTEGER NOT NULL CHECK (cpus > 0),
    memory_mib  INTEGER NOT NULL CHECK (memory_mib >= 256),
    network     TEXT NOT NULL DEFAULT 'user' CHECK (network IN ('user', 'nat')),
    host_key    TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    FOREIGN KEY (project, generation) REFERENCES generations (project, generation)
        ON DELETE RESTRICT
);
CREATE INDEX tasks_by_project ON tasks (project, generation);

-- Loopback ports forwarded to guests' SSH. The primary key guarantees that no two VMs ever
-- share a port, whichever process allocated it.
CREATE TABLE ports (
    port        INTEGER PRIMARY KEY CHECK (port BETWEEN 1024 AND 65535),
    owner_kind  TEXT NOT NULL CHECK (owner_kind IN ('project', 'task')),
    owner_name  TEXT NOT NULL,
    UNIQUE (owner_kind, owner_name)
);

-- Encrypted environment variables (AES-256-GCM; the key lives in the OS keystore).
-- scope is '' for global variables or a project name.
CREATE TABLE env_vars (
    scope       TEXT NOT NULL,
    name        TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (scope, name)
);
