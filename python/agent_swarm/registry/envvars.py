"""The encrypted environment variables table: AES-GCM nonce + ciphertext per (scope, name),
where scope ``''`` is global and any other scope a project name (the project must exist). A
mixin of :class:`~agent_swarm.registry.Registry`; encryption itself is in
:mod:`agent_swarm.secrets`.
"""

from __future__ import annotations

from agent_swarm.errors import EnvVarNotFound
from agent_swarm.models import EnvVarRecord
from agent_swarm.names import validate_env_name
from agent_swarm.registry.projects import ProjectsMixin


class EnvVarsMixin(ProjectsMixin):
    """Store, read, list and remove encrypted variables."""

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


def _env_not_found(scope: str, name: str) -> EnvVarNotFound:
    where = f"in project {scope!r}" if scope else "(global)"
    listing = f"agent-swarm env list --project {scope}" if scope else "agent-swarm env list"
    return EnvVarNotFound(
        f"no environment variable {name} {where}",
        hint=f"see `{listing}` for the variables there are",
    )
