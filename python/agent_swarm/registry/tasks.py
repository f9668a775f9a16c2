"""Registry tables of the VMs that do the work: tasks (each pinned to a template generation of
its project), the loopback SSH ports of every VM, and the one-transaction registration of a new
VM. A mixin of :class:`~agent_swarm.registry.Registry`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from agent_swarm.errors import AlreadyExists, InstanceNotFound, InvalidState, RegistryError
from agent_swarm.models import Project, Task
from agent_swarm.names import validate_name
from agent_swarm.registry.journal import JournalMixin
from agent_swarm.registry.projects import ProjectsMixin


class TasksMixin(ProjectsMixin, JournalMixin):
    """Tasks and ports. Builds on projects (a task runs a project's template) and on the
    journal (a new VM is registered together with its journal entry)."""

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
        warm_from: str = "",
        generation: int | None = None,
    ) -> Task:
        """Register a task on the project's newest template generation (or ``generation``)."""
        validate_name(name, "task name")
        try:
            with self.transaction() as c:
                self.get_project(project)
                # The newest generation, unless the caller planned on one (a warm template's,
                # a fork's source's): that one, even if a seal added a newer one meanwhile.
                gen = (
                    self.latest_generation(project)
                    if generation is None
                    else self.get_generation(project, generation)
                )
                if gen is None:
                    raise InvalidState(
                        f"project {project!r} has no template yet",
                        hint=f"set it up, then seal it with `agent-swarm project stop {project}`",
                    )
                if warm_from and gen.memory_image != warm_from:
                    raise InvalidState(
                        f"the warm template of {project!r} generation {gen.generation} was "
                        "removed meanwhile",
                        hint="run the command again (or with --cold)",
                    )
                c.execute(
                    "INSERT INTO tasks (name, project, generation, provider, cpus, memory_mib,"
                    " network, host_key, host_access, warm_from)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                        warm_from,
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

    def register_vm(
        self,
        kind: str,
        name: str,
        fields: dict[str, Any],
        *,
        ports: Iterator[int] | None,
        op: str = "create",
        detail: str = "",
    ) -> tuple[int, Project | Task]:
        """One transaction for a new VM: its journal entry (step "registered"), its row
        (``fields`` as for :meth:`add_project`/:meth:`add_task`) and, when ``ports`` is given,
        its loopback port. Returns (journal entry id, row)."""
        with self.transaction() as c:
            entry = self.journal_begin(op, kind, name, detail, str(fields.get("provider", "")))
            c.execute("UPDATE journal SET step = 'registered' WHERE id = ?", (entry,))
            row: Project | Task = (
                self.add_project(name, **fields)
                if kind == "project"
                else self.add_task(name, **fields)
            )
            if ports is not None:
                self.allocate_port(kind, name, ports)
        return entry, row

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

    def remove_port(self, port: int) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM ports WHERE port = ?", (port,))

    def ports(self) -> list[tuple[int, str, str]]:
        rows = self._conn.execute(
            "SELECT port, owner_kind, owner_name FROM ports ORDER BY port"
        ).fetchall()
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def _task(row: sqlite3.Row) -> Task:
    d = dict(row)
    d["host_access"] = bool(d["host_access"])
    return Task(**d)
