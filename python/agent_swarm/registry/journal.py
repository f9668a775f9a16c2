"""The operations journal table (crash safety; see ``migrations/0002_journal.sql``): one row
per operation in progress on a VM, left behind if its process dies so that ``doctor --fix`` can
complete or undo it. A mixin of :class:`~agent_swarm.registry.Registry`.
"""

from __future__ import annotations

import sqlite3

from agent_swarm.errors import Busy
from agent_swarm.models import JournalEntry
from agent_swarm.registry.base import RegistryBase


class JournalMixin(RegistryBase):
    """Begin, step through and end journal entries; refuse a second operation on a busy VM."""

    def journal_begin(
        self, op: str, kind: str, name: str, detail: str = "", provider: str = ""
    ) -> int:
        """Record the intent to run ``op`` on a VM (on ``provider``: recovery must reach the
        VM even when no row names its provider any more); raises :class:`Busy` when another
        operation on it is in progress (or was interrupted and not yet repaired)."""
        from agent_swarm import procs

        pid, token = procs.me()
        try:
            with self.transaction() as c:
                cur = c.execute(
                    "INSERT INTO journal (op, kind, name, detail, pid, pid_start, provider)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (op, kind, name, detail, pid, token, provider),
                )
                return int(cur.lastrowid or 0)
        except sqlite3.IntegrityError:
            other = self.journal_of(kind, name)
            if other is None:  # finished in between: try once more
                return self.journal_begin(op, kind, name, detail, provider)
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
