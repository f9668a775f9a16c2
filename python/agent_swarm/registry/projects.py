"""Registry tables of what VMs are made from: base images, projects, and the sealed template
generations of each project. A mixin of :class:`~agent_swarm.registry.Registry`.
"""

from __future__ import annotations

import sqlite3

from agent_swarm.errors import (
    AlreadyExists,
    ImageNotFound,
    InvalidState,
    ProjectNotFound,
    RegistryError,
)
from agent_swarm.models import BaseImage, Generation, Project
from agent_swarm.names import validate_name
from agent_swarm.registry.base import RegistryBase


class ProjectsMixin(RegistryBase):
    """Base images, projects and template generations."""

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
    def add_generation(self, project: str, path: str, *, format: str = "qcow2") -> Generation:
        """Record a new sealed generation (number = previous + 1) with the project's provider
        and machine shape, and return it."""
        with self.transaction() as c:
            p = self.get_project(project)
            (last,) = c.execute(
                "SELECT COALESCE(MAX(generation), 0) FROM generations WHERE project = ?",
                (project,),
            ).fetchone()
            c.execute(
                "INSERT INTO generations (project, generation, path, format, provider, cpus,"
                " memory_mib, disk_gib) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (project, last + 1, path, format, p.provider, p.cpus, p.memory_mib, p.disk_gib),
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

    def set_warm(self, project: str, generation: int, path: str | None, host_key: str) -> None:
        """Record (or, with ``path`` None, forget) a generation's warm template. Forgetting is
        refused while a task resumed from it."""
        with self.transaction() as c:
            if path is None:
                g = self.get_generation(project, generation)
                if (
                    g.memory_image
                    and c.execute(
                        "SELECT 1 FROM tasks WHERE warm_from = ? LIMIT 1", (g.memory_image,)
                    ).fetchone()
                ):
                    raise InvalidState(
                        f"the warm template of generation {generation} of {project!r} is "
                        "used by tasks resumed from it",
                        hint="delete those tasks first (`agent-swarm list`)",
                    )
            c.execute(
                "UPDATE generations SET memory_image = ?, host_key = ?"
                " WHERE project = ? AND generation = ?",
                (path, host_key, project, generation),
            )

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


def _project(row: sqlite3.Row) -> Project:
    d = dict(row)
    d["host_access"] = bool(d["host_access"])
    return Project(**d)
