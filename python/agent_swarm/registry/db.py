"""SQLite registry in WAL mode with versioned migrations.

* The schema version is ``PRAGMA user_version``; migrations are the numbered ``*.sql`` files in
  ``agent_swarm/registry/migrations`` and each one runs in its own transaction, so a crash
  mid-migration leaves the previous version intact.
* Every multi-step change runs inside :meth:`Registry.transaction` (``BEGIN IMMEDIATE``), so
  concurrent agent-swarm processes never see half of it. Writers wait up to ``busy_timeout``
  for each other instead of failing.
* A database written by a newer agent-swarm (higher user_version) is refused, not downgraded.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from agent_swarm.errors import (
    AlreadyExists,
    Busy,
    EnvVarNotFound,
    ImageNotFound,
    InstanceNotFound,
    InvalidState,
    ProjectNotFound,
    RegistryError,
)
from agent_swarm.models import BaseImage, EnvVarRecord, Generation, JournalEntry, Project, Task
from agent_swarm.names import validate_env_name, validate_name

BUSY_TIMEOUT_MS = 10_000


def _migrations() -> list[tuple[int, str, str]]:
    out = []
    for entry in resources.files("agent_swarm.registry.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    out.sort()
    for i, (num, name, _) in enumerate(out, start=1):
        if num != i:
            raise RuntimeError(f"migration numbering gap at {name}")  # a packaging bug
    return out


SCHEMA_VERSION = len(_migrations())


class Registry:
    """One connection to the registry database. Not shared between threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
        except (OSError, sqlite3.Error) as exc:
            raise RegistryError(
                f"cannot open the registry {self.path}: {exc}",
                hint="check that AGENT_SWARM_HOME points to a writable directory",
            ) from exc
        self._conn.row_factory = sqlite3.Row
        try:
            os.chmod(self.path, 0o600)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RegistryError(f"cannot switch {self.path} to WAL mode (got {mode})")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise RegistryError(
                f"the registry {self.path} is unreadable: {exc}",
                hint="restore it from a backup, or move it away to start afresh",
            ) from exc

    # ---- lifecycle ----
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise RegistryError(
                f"the registry {self.path} has schema version {current}, newer than this "
                f"agent-swarm understands ({SCHEMA_VERSION})",
                hint="upgrade agent-swarm (pip install -U agent-swarm)",
            )
        for num, name, sql in _migrations():
            if num <= current:
                continue
            try:
                # executescript runs the whole migration and the version bump as one
                # transaction; on failure it is rolled back below.
                self._conn.executescript(
                    f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {num};\nCOMMIT;"
                )
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                # Another process may have migrated concurrently; re-check before failing.
                if self.schema_version >= num:
                    continue
                raise RegistryError(f"migration {name} failed: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception."""
        if self._conn.in_transaction:  # nested: join the outer transaction
            yield self._conn
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            # "database is locked" after the busy timeout, "database or disk is full", ...
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            hint = (
                f"free some space on the filesystem of {self.path.parent}"
                if "full" in str(exc)
                else "another agent-swarm process may hold the registry; try again"
            )
            raise RegistryError(
                f"cannot update the registry {self.path}: {exc}", hint=hint
            ) from exc

    def _one(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(sql, args).fetchone()
        return row

    # ---- base images ----
    def add_base_image(
        self,
        name: str,
        *,
        path: str,
        format: str,
        virtual_size: int,
        source: str,
        sha256: str | None = None,
    ) -> BaseImage:
        validate_name(name, "base image name")
        try:
            with self.transaction() as c:
                c.execute(
                    "INSERT INTO base_images (name, path, format, virtual_size, source, sha256)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (name, path, format, virtual_size, source, sha256),
                )
        except sqlite3.IntegrityError as exc:
            if self._one("SELECT 1 FROM base_images WHERE name = ?", (name,)):
                raise AlreadyExists(
                    f"base image {name!r} already exists",
                    hint="choose another --name, or remove the existing one first",
                ) from exc
            raise RegistryError(f"cannot register base image {name!r}: {exc}") from exc
        return self.get_base_image(name)

    def get_base_image(self, name: str) -> BaseImage:
        row = self._one("SELECT * FROM base_images WHERE name = ?", (name,))
        if row is None:
            raise ImageNotFound(
                f"no base image named {name!r}",
                hint="list them with `agent-swarm init-base --list`, or create one with "
                "`agent-swarm init-base`",
            )
        return BaseImage(**dict(row))

    def list_base_images(self) -> list[BaseImage]:
        rows = self._conn.execute("SELECT * FROM base_images ORDER BY name").fetchall()
        return [BaseImage(**dict(r)) for r in rows]

    def remove_base_image(self, name: str) -> None:
        with self.transaction() as c:
            self.get_base_image(name)
            used = c.execute(
                "SELECT name FROM projects WHERE base_image = ? ORDER BY name", (name,)
            ).fetchall()
            if used:
                raise InvalidState(
                    f"base image {name!r} is used by project(s) " + ", ".join(r[0] for r in used),
                    hint="delete those projects first",
                )
            c.execute("DELETE FROM base_images WHERE name = ?", (name,))

    # ---- projects ----
    def add_project(
        self,
        name: str,
        *,
        base_image: str,
        provider: str,
        cpus: int,
        memory_mib: int,
        disk_gib: int,
        network: str = "user",
        host_key: str = "",
    ) -> Project:
        validate_name(name, "project name")
        try:
            with self.transaction() as c:
                self.get_base_image(base_image)
                c.execute(
                    "INSERT INTO projects (name, base_image, provider, cpus, memory_mib, "
                    "disk_gib, network, host_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, base_image, provider, cpus, memory_mib, disk_gib, network, host_key),
                )
        except sqlite3.IntegrityError as exc:
            if self._one("SELECT 1 FROM projects WHERE name = ?", (name,)):
                raise AlreadyExists(
                    f"project {name!r} already exists",
                    hint="choose another name, or `agent-swarm project delete` it first",
                ) from exc
            raise RegistryError(f"cannot register project {name!r}: {exc}") from exc
        return self.get_project(name)

    def get_project(self, name: str) -> Project:
        row = self._one("SELECT * FROM projects WHERE name = ?", (name,))
        if row is None:
            raise ProjectNotFound(
                f"no project named {name!r}",
                hint="see `agent-swarm project list`, or create it with "
                "`agent-swarm project create`",
            )
        return Project(**dict(row))

    def list_projects(self) -> list[Project]:
        rows = self._conn.execute("SELECT * FROM projects ORDER BY name").fetchall()
        return [Project(**dict(r)) for r in rows]

    def remove_project(self, name: str) -> None:
        with self.transaction() as c:
            self.get_project(name)
            tasks = c.execute(
                "SELECT name FROM tasks WHERE project = ? ORDER BY name", (name,)
            ).fetchall()
            if tasks:
                raise InvalidState(
                    f"project {name!r} still has task(s) " + ", ".join(r[0] for r in tasks),
                    hint=f"delete them first: `agent-swarm bulk delete --project {name}`",
                )
            c.execute("DELETE FROM ports WHERE owner_kind = 'project' AND owner_name = ?", (name,))
            c.execute("DELETE FROM env_vars WHERE scope = ?", (name,))
            c.execute("DELETE FROM projects WHERE name = ?", (name,))

    # ---- template generations ----
    def add_generation(self, project: str, path: str) -> Generation:
        """Record a new sealed generation (number = previous + 1) and return it."""
        with self.transaction() as c:
            self.get_project(project)
            (last,) = c.execute(
                "SELECT COALESCE(MAX(generation), 0) FROM generations WHERE project = ?",
                (project,),
            ).fetchone()
            c.execute(
                "INSERT INTO generations (project, generation, path) VALUES (?, ?, ?)",
                (project, last + 1, path),
            )
        return self.get_generation(project, last + 1)

    def get_generation(self, project: str, generation: int) -> Generation:
        row = self._one(
            "SELECT * FROM generations WHERE project = ? AND generation = ?",
            (project, generation),
        )
        if row is None:
            raise InvalidState(f"project {project!r} has no template generation {generation}")
        return Generation(**dict(row))

    def latest_generation(self, project: str) -> Generation | None:
        row = self._one(
            "SELECT * FROM generations WHERE project = ? ORDER BY generation DESC LIMIT 1",
            (project,),
        )
        return Generation(**dict(row)) if row else None

    def list_generations(self, project: str) -> list[Generation]:
        rows = self._conn.execute(
            "SELECT * FROM generations WHERE project = ? ORDER BY generation", (project,)
        ).fetchall()
        return [Generation(**dict(r)) for r in rows]

    # ---- tasks ----
    def add_task(
        self,
        name: str,
        *,
        project: str,
        provider: str,
        cpus: int,
        memory_mib: int,
        network: str = "user",
        host_key: str = "",
    ) -> Task:
        """Register a task on the project's newest template generation."""
        validate_name(name, "task name")
        try:
            with self.transaction() as c:
                self.get_project(project)
                gen = self.latest_generation(project)
                if gen is None:
                    raise InvalidState(
                        f"project {project!r} has no template yet",
                        hint=f"set it up, then seal it with `agent-swarm project stop {project}`",
                    )
                c.execute(
                    "INSERT INTO tasks (name, project, generation, provider, cpus, memory_mib,"
                    " network, host_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, project, gen.generation, provider, cpus, memory_mib, network, host_key),
                )
        except sqlite3.IntegrityError as exc:
            if self._one("SELECT 1 FROM tasks WHERE name = ?", (name,)):
                raise AlreadyExists(
                    f"task {name!r} already exists",
                    hint="choose another name, or `agent-swarm delete` it first",
                ) from exc
            raise RegistryError(f"cannot register task {name!r}: {exc}") from exc
        return self.get_task(name)

    def get_task(self, name: str) -> Task:
        row = self._one("SELECT * FROM tasks WHERE name = ?", (name,))
        if row is None:
            raise InstanceNotFound(
                f"no task named {name!r}", hint="see `agent-swarm list` for the tasks there are"
            )
        return Task(**dict(row))

    def list_tasks(self, project: str | None = None) -> list[Task]:
        if project is None:
            rows = self._conn.execute("SELECT * FROM tasks ORDER BY name").fetchall()
        else:
            rows = self._conn.execute(
                "SELECT * FROM tasks WHERE project = ? ORDER BY name", (project,)
            ).fetchall()
        return [Task(**dict(r)) for r in rows]

    def remove_task(self, name: str) -> None:
        with self.transaction() as c:
            self.get_task(name)
            c.execute("DELETE FROM ports WHERE owner_kind = 'task' AND owner_name = ?", (name,))
            c.execute("DELETE FROM tasks WHERE name = ?", (name,))

    def set_host_key(self, kind: str, name: str, host_key: str) -> None:
        table = {"project": "projects", "task": "tasks"}[kind]
        with self.transaction() as c:
            c.execute(f"UPDATE {table} SET host_key = ? WHERE name = ?", (host_key, name))

    # ---- ports ----
    def allocate_port(self, owner_kind: str, owner_name: str, candidates: Iterator[int]) -> int:
        """Reserve the first free port from ``candidates`` for one VM (idempotent per VM).

        The ``ports`` primary key makes the reservation safe across processes; callers still
        check that the port is free on the host before offering it.
        """
        with self.transaction() as c:
            row = c.execute(
                "SELECT port FROM ports WHERE owner_kind = ? AND owner_name = ?",
                (owner_kind, owner_name),
            ).fetchone()
            if row:
                return int(row[0])
            for port in candidates:
                try:
                    c.execute(
                        "INSERT INTO ports (port, owner_kind, owner_name) VALUES (?, ?, ?)",
                        (port, owner_kind, owner_name),
                    )
                except sqlite3.IntegrityError:
                    continue
                return port
        raise InvalidState("no free loopback port left for SSH forwarding")

    def port_of(self, owner_kind: str, owner_name: str) -> int | None:
        row = self._one(
            "SELECT port FROM ports WHERE owner_kind = ? AND owner_name = ?",
            (owner_kind, owner_name),
        )
        return int(row[0]) if row else None

    # ---- operations journal (crash safety; see migrations/0002_journal.sql) ----
    def journal_begin(self, op: str, kind: str, name: str, detail: str = "") -> int:
        """Record the intent to run ``op`` on a VM; raises :class:`Busy` when another operation
        on it is in progress (or was interrupted and not yet repaired)."""
        from agent_swarm import procs

        pid, token = procs.me()
        try:
            with self.transaction() as c:
                cur = c.execute(
                    "INSERT INTO journal (op, kind, name, detail, pid, pid_start)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (op, kind, name, detail, pid, token),
                )
                return int(cur.lastrowid or 0)
        except sqlite3.IntegrityError:
            other = self.journal_of(kind, name)
            if other is None:  # finished in between: try once more
                return self.journal_begin(op, kind, name, detail)
            raise _busy(other) from None

    def ensure_idle(self, kind: str, name: str) -> None:
        """Raise :class:`Busy` when an operation on this VM is in progress or was interrupted."""
        entry = self.journal_of(kind, name)
        if entry is not None:
            raise _busy(entry)

    def journal_step(self, entry_id: int, step: str, detail: str | None = None) -> None:
        with self.transaction() as c:
            if detail is None:
                c.execute("UPDATE journal SET step = ? WHERE id = ?", (step, entry_id))
            else:
                c.execute(
                    "UPDATE journal SET step = ?, detail = ? WHERE id = ?",
                    (step, detail, entry_id),
                )

    def journal_end(self, entry_id: int) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM journal WHERE id = ?", (entry_id,))

    def journal_of(self, kind: str, name: str) -> JournalEntry | None:
        row = self._one("SELECT * FROM journal WHERE kind = ? AND name = ?", (kind, name))
        return JournalEntry(**dict(row)) if row else None

    def journal(self) -> list[JournalEntry]:
        rows = self._conn.execute("SELECT * FROM journal ORDER BY id").fetchall()
        return [JournalEntry(**dict(r)) for r in rows]

    def remove_port(self, port: int) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM ports WHERE port = ?", (port,))

    def ports(self) -> list[tuple[int, str, str]]:
        rows = self._conn.execute(
            "SELECT port, owner_kind, owner_name FROM ports ORDER BY port"
        ).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def remove_generation(self, project: str, generation: int) -> None:
        """Forget a sealed generation (the caller removes its file). Refused while a task
        pins it (foreign key)."""
        try:
            with self.transaction() as c:
                c.execute(
                    "DELETE FROM generations WHERE project = ? AND generation = ?",
                    (project, generation),
                )
        except sqlite3.IntegrityError as exc:
            raise InvalidState(
                f"generation {generation} of project {project!r} is still used by a task"
            ) from exc

    # ---- encrypted environment variables (scope '' = global, else a project name) ----
    def _check_env_scope(self, scope: str) -> None:
        if scope != "":
            self.get_project(scope)

    def put_env_var(self, scope: str, name: str, nonce: bytes, ciphertext: bytes) -> None:
        """Insert or replace one encrypted variable (the project of ``scope`` must exist)."""
        validate_env_name(name)
        with self.transaction() as c:
            self._check_env_scope(scope)
            c.execute(
                "INSERT INTO env_vars (scope, name, nonce, ciphertext) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (scope, name) DO UPDATE SET nonce = excluded.nonce,"
                " ciphertext = excluded.ciphertext,"
                " updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                (scope, name, nonce, ciphertext),
            )

    def get_env_var(self, scope: str, name: str) -> EnvVarRecord:
        row = self._one("SELECT * FROM env_vars WHERE scope = ? AND name = ?", (scope, name))
        if row is None:
            self._check_env_scope(scope)
            raise _env_not_found(scope, name)
        return EnvVarRecord(**dict(row))

    def list_env_vars(self, scopes: list[str] | None = None) -> list[EnvVarRecord]:
        """The variables of ``scopes`` (all scopes when None), ordered by scope then name.

        Every named project scope must exist (:class:`ProjectNotFound` otherwise).
        """
        if scopes is None:
            rows = self._conn.execute("SELECT * FROM env_vars ORDER BY scope, name").fetchall()
        else:
            for scope in scopes:
                self._check_env_scope(scope)
            marks = ", ".join("?" * len(scopes))
            rows = self._conn.execute(
                f"SELECT * FROM env_vars WHERE scope IN ({marks}) ORDER BY scope, name",
                tuple(scopes),
            ).fetchall()
        return [EnvVarRecord(**dict(r)) for r in rows]

    def count_env_vars(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM env_vars").fetchone()[0])

    def remove_env_var(self, scope: str, name: str) -> None:
        with self.transaction() as c:
            self._check_env_scope(scope)
            cur = c.execute("DELETE FROM env_vars WHERE scope = ? AND name = ?", (scope, name))
            if cur.rowcount == 0:
                raise _env_not_found(scope, name)


def _busy(e: JournalEntry) -> Busy:
    from agent_swarm import procs

    if procs.alive(e.pid, e.pid_start):
        return Busy(
            f"{e.kind} {e.name!r} is busy: {e.op} in progress "
            f"(process {e.pid}, since {e.started_at})",
            hint="wait for it to finish",
        )
    return Busy(
        f"an earlier {e.op} of {e.kind} {e.name!r} was interrupted "
        f"(at step {e.step!r}; process {e.pid} is gone)",
        hint="run `agent-swarm doctor --fix` to complete or undo it",
    )


def _env_not_found(scope: str, name: str) -> EnvVarNotFound:
    where = f"in project {scope!r}" if scope else "(global)"
    listing = f"agent-swarm env list --project {scope}" if scope else "agent-swarm env list"
    return EnvVarNotFound(
        f"no environment variable {name} {where}",
        hint=f"see `{listing}` for the variables there are",
    )
