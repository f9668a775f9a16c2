"""Garbage collection of template generations no task pins (each project's newest stays:
it is its disk's parent)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_swarm import disks
from agent_swarm.errors import InvalidState
from agent_swarm.journal import Operation, Recovery
from agent_swarm.models import JournalEntry

if TYPE_CHECKING:
    from agent_swarm.core import Core


class GcOp(Operation):
    """Journaled on the project (no seal or second gc of it meanwhile). Every step is
    idempotent: the next generation is detached from the victim as a new file renamed into
    place, then the victim is forgotten and removed; an interrupted gc is finished by
    running gc again."""

    op = "gc"
    steps = ("begin", "detached", "forgotten")

    def recover(self, e: JournalEntry) -> Recovery:
        def finish() -> None:
            # Killed between forgetting the generation and removing its file: the file is
            # no generation any more. (The stale entry still holds the project's journal
            # slot, so no seal is writing a new generation file meanwhile.)
            known = {g.path for g in self.reg.list_generations(e.name)}
            for f in self.core.layout.generation_files(e.name):
                if str(f) not in known:
                    f.unlink(missing_ok=True)
            self.reg.journal_end(e.id)

        return Recovery(
            " (nothing is lost; `agent-swarm gc` removes what is still unused)",
            "remove the forgotten generation's file if it is left, clear it",
            finish,
        )


class GC:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg
        self.op = GcOp(core)

    def plan(self) -> list[dict[str, Any]]:
        """Generations no task pins, except each project's newest, and except those the next
        generation's format cannot be detached from (VHDX chains)."""
        out = []
        for p in self.reg.list_projects():
            gens = self.reg.list_generations(p.name)
            tasks = self.reg.list_tasks(p.name)
            pinned = {t.generation for t in tasks}
            resumed = {t.warm_from for t in tasks}
            for g in gens[:-1]:
                # An older generation's warm template: no new task resumes from it.
                if g.memory_image and g.memory_image not in resumed:
                    t = self.core.warm.template(g)
                    out.append(
                        {
                            "project": p.name,
                            "generation": g.generation,
                            "path": g.memory_image,
                            "disk_bytes": t.size() if t else 0,
                            "warm": True,
                        }
                    )
            for g, child in itertools.pairwise(gens):
                if g.generation in pinned or not disks.backend_for(child.format).detachable:
                    continue
                size = disks.backend_for(g.format).actual_size(Path(g.path))
                out.append(
                    {
                        "project": p.name,
                        "generation": g.generation,
                        "path": g.path,
                        "disk_bytes": size,
                    }
                )
        return out

    def remove(self, item: dict[str, Any]) -> bool:
        """Remove one unused generation: the next generation (whose parent it is) is
        rewritten onto the victim's own parent first, so its content is unchanged and VMs
        running on the old file keep it."""
        project, n = item["project"], int(item["generation"])
        if item.get("warm"):
            latest = self.reg.latest_generation(project)
            if latest is None or latest.generation == n:
                return False  # the newest again? (never: generations only grow) keep it
            with self.op.run("project", project):
                return self.core.warm.drop(project, n)
        with self.op.run("project", project) as op:
            gens = self.reg.list_generations(project)
            idx = next((i for i, g in enumerate(gens) if g.generation == n), None)
            if idx is None or idx == len(gens) - 1:
                return False  # the plan is stale: gone already, or the newest now
            if any(t.generation == n for t in self.reg.list_tasks(project)):
                raise InvalidState(f"generation {n} of project {project!r} is in use again")
            victim, child = gens[idx], gens[idx + 1]
            backend = disks.backend_for(child.format)
            vpath, cpath = Path(victim.path), Path(child.path)
            parent = backend.parent_of(cpath)
            if parent is not None and parent.resolve() == vpath.resolve():
                # (else an interrupted gc already detached it)
                self.core.progress(
                    f"project {project}: detaching generation {child.generation} from "
                    f"generation {n}"
                )
                backend.detach_parent(cpath, disks.backend_for(victim.format).parent_of(vpath))
            op.step("detached")
            self.core.warm.drop(project, n)  # its warm template (no task resumed from it)
            self.reg.remove_generation(project, n)
            op.step("forgotten")
            vpath.unlink(missing_ok=True)
        return True
