"""SQLite registry in WAL mode with versioned migrations.

* The schema version is ``PRAGMA user_version``; migrations are the numbered ``*.sql`` files in
  ``agent_swarm/registry/migrations`` and each one runs in its own transaction, so a crash
  mid-migration leaves the previous version intact.
* Every multi-step change runs inside :meth:`Registry.transaction` (``BEGIN IMMEDIATE``), so
  concurrent agent-swarm processes never see half of it. Writers wait up to ``busy_timeout``
  for each other instead of failing.
* A database written by a newer agent-swarm (higher user_version) is refused, not downgraded.

:class:`Registry` here opens (or first creates) the database and runs the migrations; its table
methods come from mixins, one area each: :mod:`~agent_swarm.registry.projects` (base images,
projects, template generations), :mod:`~agent_swarm.registry.tasks` (tasks, loopback ports,
registering a new VM), :mod:`~agent_swarm.registry.journal` (operations in progress) and
:mod:`~agent_swarm.registry.envvars` (encrypted environment variables).
:mod:`~agent_swarm.registry.base` holds the connection and transactions,
:mod:`~agent_swarm.registry.errors` the mapping of failures to ``RegistryError``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import urllib.parse
from importlib import resources
from pathlib import Path

from agent_swarm.errors import RegistryError
from agent_swarm.fsutil import file_lock
from agent_swarm.registry.envvars import EnvVarsMixin
from agent_swarm.registry.errors import (
    _check_not_empty,
    _check_owner,
    _db_error,
    _os_error,
    _sidecar,
)
from agent_swarm.registry.journal import JournalMixin
from agent_swarm.registry.projects import ProjectsMixin
from agent_swarm.registry.tasks import TasksMixin

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


FK_OFF_MARK = "-- agent-swarm: foreign_keys=off"


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
        # A migration that rebuilds tables (SQLite cannot alter a CHECK) runs with foreign
        # keys off, which only takes effect outside a transaction; the references are checked
        # before it commits.
        rebuild = sql.startswith(FK_OFF_MARK)
        try:
            if rebuild:
                conn.execute("PRAGMA foreign_keys = OFF")
            # executescript runs the whole migration and the version bump as one
            # transaction; on failure it is rolled back below.
            conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {num};\n")
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise sqlite3.IntegrityError(
                    f"{len(broken)} broken reference(s), e.g. in table {broken[0][0]}"
                )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            # Another process may have migrated concurrently; re-check before failing.
            with contextlib.suppress(sqlite3.Error):
                if _user_version(conn) >= num:
                    continue
            raise _db_error(exc, path, f"apply migration {name} to") from exc
        finally:
            if rebuild:
                conn.execute("PRAGMA foreign_keys = ON")


class Registry(TasksMixin, EnvVarsMixin, ProjectsMixin, JournalMixin):
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
