"""What every registry table mixin builds on: the connection, the database path, and
:meth:`RegistryBase.transaction`. :class:`~agent_swarm.registry.Registry` opens the connection;
the mixins composed into it (one module per area) only run statements on it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent_swarm.registry.errors import _db_error


class RegistryBase:
    """The open connection (set by :class:`~agent_swarm.registry.Registry`) and its
    transactions. Not shared between threads."""

    path: Path
    _conn: sqlite3.Connection

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
