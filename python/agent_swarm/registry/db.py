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
import errno
import os
import sqlite3
import tempfile
import urllib.parse
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
from agent_swarm.fsutil import file_lock
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


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RegistryError(f"cannot switch {path} to WAL mode (got {mode})")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    current = _user_version(conn)
    if current > SCHEMA_VERSION:
        raise RegistryError(
            f"the registry {path} has schema version {current}, newer than this "
            f"agent-swarm understands ({SCHEMA_VERSION})",
            hint="upgrade agent-swarm (pip install -U agent-swarm)",
        )
    for num, name, sql in _migrations():
        if num <= current:
            continue
        try:
            # executescript runs the whole migration and the version bump as one
            # transaction; on failure it is rolled back below.
            conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {num};\nCOMMIT;")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            # Another process may have migrated concurrently; re-check before failing.
            with contextlib.suppress(sqlite3.Error):
                if _user_version(conn) >= num:
                    continue
            raise _db_error(exc, path, f"apply migration {name} to") from exc


# ---- failures: say what is wrong, and never call a healthy registry corrupt ----

# SQLite primary result codes (the low byte of an extended code)
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_AUTH, _SQLITE_FORMAT, _SQLITE_NOTADB = 23, 24, 26


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _mount_point(path: Path) -> Path:
    p = path.resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def _fs_full(directory: Path) -> bool:
    """Less than 1 MiB (or no inode) left for us on the filesystem of ``directory``."""
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return False
    free = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < (1 << 20) or (st.f_files > 0 and st.f_favail == 0)


def _full_error(path: Path, doing: str, detail: str) -> RegistryError:
    mount = _mount_point(path.parent)
    return RegistryError(
        f"cannot {doing} the registry {path}: the filesystem is full ({detail})",
        hint=f"free some space on {mount} (see `df -h {mount}`); nothing was committed to "
        "the registry",
    )


def _access_hint(path: Path) -> str:
    return (
        f"check the ownership and permissions of {path.parent} and of {path.name} (and its "
        "-wal/-shm files), and that the filesystem is not mounted read-only"
    )


def _db_error(exc: sqlite3.Error, path: Path, doing: str) -> RegistryError:
    """The RegistryError for an SQLite failure, by its result code (not every DatabaseError
    means corruption: a full disk or a permission problem leaves a healthy database)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if primary == _SQLITE_FULL or (
        primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN) and _fs_full(path.parent)
    ):
        return _full_error(path, doing, str(exc))
    if primary in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_AUTH, _SQLITE_CANTOPEN):
        return RegistryError(
            f"cannot {doing} the registry {path}: {exc} ({name})", hint=_access_hint(path)
        )
    if primary == _SQLITE_IOERR:
        return RegistryError(
            f"cannot {doing} the registry {path}: {exc} ({name})",
            hint="check the disk and the kernel log (dmesg); the registry file itself may be "
            "fine, so keep it",
        )
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return RegistryError(
            f"cannot {doing} the registry {path}: {exc}",
            hint="another agent-swarm process may hold the registry; try again",
        )
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_FORMAT):
        return RegistryError(
            f"the registry {path} is unreadable: {exc}",
            hint="restore it from a backup, or move it away to start afresh",
        )
    return RegistryError(
        f"cannot {doing} the registry {path}: {exc}",
        hint="run with --debug for details, and report it if the cause is not clear",
    )


def _os_error(exc: OSError, path: Path, doing: str) -> RegistryError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _full_error(path, doing, exc.strerror or str(exc))
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RegistryError(
            f"cannot {doing} the registry {path}: {exc.strerror}", hint=_access_hint(path)
        )
    return RegistryError(
        f"cannot {doing} the registry {path}: {exc.strerror or exc}",
        hint="check that AGENT_SWARM_HOME points to a writable directory",
    )


def _user_name(uid: int) -> str:
    try:
        import pwd

        return f" ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return ""


def _check_owner(path: Path) -> None:
    """Refuse a state directory or registry of another user, before touching anything.

    Without this another user's registry ends in an internal error (chmod fails), or, as
    root, it "works" and leaves root-owned -wal/-shm files that lock its owner out.
    """
    if not hasattr(os, "geteuid"):  # pragma: no cover - Windows
        return
    me = os.geteuid()
    for p in (path.parent, path, _sidecar(path, "-wal"), _sidecar(path, "-shm")):
        try:
            uid = p.stat().st_uid
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _os_error(exc, path, "inspect") from exc
        if uid != me:
            also = "; as root, agent-swarm would leave root-owned files there" if me == 0 else ""
            what = "the state directory " if p == path.parent else ""
            raise RegistryError(
                f"{what}{p} is owned by uid {uid}{_user_name(uid)}, but you are uid {me}"
                f"{_user_name(me)}",
                hint="run agent-swarm as its owner, or set AGENT_SWARM_HOME to a state "
                f"directory of your own{also}",
            )


def _check_not_empty(path: Path) -> None:
    """A 0-byte registry.db is never ours (new ones are renamed into place complete): it was
    truncated or replaced. Opening it would silently forget every VM, so refuse."""
    if path.stat().st_size > 0:
        return
    home = path.parent
    vms = 0
    for sub in ("projects", "tasks"):
        with contextlib.suppress(OSError):
            vms += sum(1 for e in (home / sub).iterdir() if e.is_dir())
    found = f" although {home} has {vms} VM director{'y' if vms == 1 else 'ies'}" if vms else ""
    raise RegistryError(
        f"the registry {path} is empty (0 bytes){found}: it was truncated or replaced "
        "(agent-swarm never leaves it empty)",
        hint="restore registry.db from a backup; only if this state directory never held "
        "VMs, delete the empty file to start afresh",
    )


class Registry:
    """One connection to the registry database. Not shared between threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, self.path, "create the directory of") from exc
        _check_owner(self.path)
        try:
            if not self.path.exists():
                self._create()
            _check_not_empty(self.path)
            # mode=rw: never let SQLite create (an empty) registry.db itself
            self._conn = sqlite3.connect(
                f"file:{urllib.parse.quote(str(self.path))}?mode=rw",
                uri=True,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise _db_error(exc, self.path, "open") from exc
        except OSError as exc:
            raise _os_error(exc, self.path, "open") from exc
        self._conn.row_factory = sqlite3.Row
        try:
            os.chmod(self.path, 0o600)  # ours: _check_owner said so
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enable_wal(self._conn, self.path)
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(self._conn, self.path)
        except BaseException as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _db_error(exc, self.path, "open") from exc
            if isinstance(exc, OSError):
                raise _os_error(exc, self.path, "open") from exc
            raise

    def _create(self) -> None:
        """A brand-new registry, built under a temporary name and renamed into place.

        So ``registry.db`` is never seen empty or half-initialised, and an empty one is never
        ours (see :func:`_check_not_empty`). The lock makes concurrent first commands build it
        once; a failure (a full disk) leaves nothing behind.
        """
        d = self.path.parent
        with file_lock(d / f".{self.path.name}.lock"):
            if self.path.exists():
                return  # another process created it meanwhile
            wal = _sidecar(self.path, "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise RegistryError(
                    f"the registry {self.path} is missing but its write-ahead log {wal} is "
                    "not: a new registry would replay someone else's changes",
                    hint=f"restore {self.path.name} from a backup, or move {wal.name} away too "
                    "to start afresh",
                )
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".new", dir=d)
            os.close(fd)  # 0600 from mkstemp; SQLite gives its -wal/-shm the same mode
            try:
                conn = sqlite3.connect(tmp, isolation_level=None)
                try:
                    _enable_wal(conn, self.path)
                    _migrate(conn, self.path)
                finally:
                    conn.close()  # checkpoints and removes the temporary -wal/-shm
                os.replace(tmp, self.path)
            finally:
                for leftover in (tmp, f"{tmp}-wal", f"{tmp}-shm", f"{tmp}-journal"):
                    Path(leftover).unlink(missing_ok=True)

    # ---- lifecycle ----
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return _user_version(self._conn)

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
            raise _db_error(exc, self.path, "update") from exc

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
        host_access: bool = False,
    ) -> Project:
        validate_name(name, "project name")
        try:
            with self.transaction() as c:
                self.get_base_image(base_image)
                c.execute(
                    "INSERT INTO projects (name, base_image, provider, cpus, memory_mib, "
                    "disk_gib, network, host_key, host_access) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        base_image,
                        provider,
                        cpus,
                        memory_mib,
                        disk_gib,
                        network,
                        host_key,
                        int(host_access),
                    ),
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
        return _project(row)

    def list_projects(self) -> list[Project]:
        rows = self._conn.execute("SELECT * FROM projects ORDER BY name").fetchall()
        return [_project(r) for r in rows]

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
        host_access: bool = False,
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
                    " network, host_key, host_access) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        project,
                        gen.generation,
                        provider,
                        cpus,
                        memory_mib,
                        network,
                        host_key,
                        int(host_access),
                    ),
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
        return _task(row)

    def list_tasks(self, project: str | None = None) -> list[Task]:
        if project is None:
            rows = self._conn.execute("SELECT * FROM tasks ORDER BY name").fetchall()
        else:
            rows = self._conn.execute(
                "SELECT * FROM tasks WHERE project = ? ORDER BY name", (project,)
            ).fetchall()
        return [_task(r) for r in rows]

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


def _project(row: sqlite3.Row) -> Project:
    d = dict(row)
    d["host_access"] = bool(d["host_access"])
    return Project(**d)


def _task(row: sqlite3.Row) -> Task:
    d = dict(row)
    d["host_access"] = bool(d["host_access"])
    return Task(**d)


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
