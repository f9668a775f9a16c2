"""Tasks: VMs cloned from their project's newest template generation, one per agent."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent_swarm.errors import InvalidState
from agent_swarm.guest import BOOT_TIMEOUT, new_host_key
from agent_swarm.models import Task
from agent_swarm.names import validate_name
from agent_swarm.ops.vms import check_space

if TYPE_CHECKING:
    from agent_swarm.core import Core
    from agent_swarm.models import VMSpec
    from agent_swarm.providers.base import Provider


class Tasks:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg

    def create(
        self,
        project: str,
        name: str,
        *,
        cpus: int | None = None,
        memory_mib: int | None = None,
        wait: bool = True,
        start: bool = True,
        force: bool = False,
        check_capacity: bool = True,
        host_access: bool | None = None,
        cold: bool = False,
    ) -> Task:
        """Write transactions: one for row + port + journal entry, one to end the entry
        (capacity, disk, seed and definition in between write nothing to the registry).

        Warm by default: when the project's newest generation has a warm template this task's
        shape matches, the task resumes from it (ops/warm.py) instead of booting; else a
        cold boot, with a one-line notice when a template exists but cannot be used."""
        validate_name(name, "task name")
        core = self.core
        p = self.reg.get_project(project)
        prov = core.provider_of(p)
        check_space(f"cannot create task {name}")
        want_cpus, want_mem = cpus or p.cpus, memory_mib or p.memory_mib
        tmpl = None
        if start and not cold:
            tmpl, why = core.warm.plan(prov, p, name, want_cpus, want_mem)
            if why:
                core.progress(f"task {name}: cold boot: {why}")
        host = new_host_key("task", name)
        entry, t = core.vms.register(
            prov,
            "task",
            name,
            {
                "project": project,
                "provider": p.provider,
                "cpus": want_cpus,
                "memory_mib": want_mem,
                "network": p.network,
                "host_access": p.host_access if host_access is None else host_access,
                "host_key": host.public_openssh,
            }
            | (
                {"warm_from": str(tmpl.dir), "generation": tmpl.generation}
                if tmpl is not None
                else {}
            ),
            start=start,
        )
        assert isinstance(t, Task)
        with core.vms.create_op.run("task", name, entry=entry) as op:
            if start and check_capacity:
                core.capacity.check_new_or_undo("task", t, force)
            gen = self.reg.get_generation(project, t.generation)
            if gen.format != prov.capabilities.disk_format:
                core.vms.rollback("task", name)
                raise InvalidState(
                    f"generation {gen.generation} of {project!r} is a {gen.format} disk, but "
                    f"the {prov.name} provider needs {prov.capabilities.disk_format}",
                    hint=f"seal the project again: `agent-swarm project stop {project}`",
                )
            if tmpl is not None:
                t0 = time.monotonic()
                spec = core.vms.materialize(
                    prov,
                    "task",
                    t,
                    tmpl.disk,
                    host,
                    size=None,
                    first_boot_setup=False,
                    op=op,
                    adjust=lambda s: core.warm.clone_spec(s, tmpl),
                )
                core.progress(
                    f"task {name}: resuming the warm template of {project} generation "
                    f"{t.generation}"
                )
                try:
                    times = core.warm.resume(prov, spec, tmpl.state, host, f"task {name}")
                    # Its next boot is an ordinary one (no saved state to wait for; its RAM
                    # still the template's file mapped privately: one RAM layout, and pages
                    # it never writes stay shared).
                    prov.define(dataclasses.replace(spec, incoming=False))
                except BaseException:
                    core.vms.rollback("task", name)
                    raise
                core.progress(
                    f"task {name}: resumed in {times['resumed']:.2f} s, guest agent at "
                    f"{times['agent']:.2f} s, new identity and clock at "
                    f"{times['identity']:.2f} s (total {time.monotonic() - t0:.2f} s)"
                )
            else:
                spec = core.vms.materialize(
                    prov, "task", t, Path(gen.path), host, size=None, first_boot_setup=False, op=op
                )
                if start:  # still journaled: counted by concurrent capacity checks until it runs
                    core.progress(
                        f"task {name}: booting (clone of {project} generation {t.generation})"
                    )
                    core.vms.boot(prov, spec)
        if start and wait:
            self._ready(prov, spec, t, resumed=tmpl is not None)
        return t

    def _ready(self, prov: Provider, spec: VMSpec, t: Task, *, resumed: bool) -> None:
        core = self.core
        if resumed:
            # cloud-init finished in the template (running `cloud-init status` costs seconds
            # under emulation); ready = SSH answers with this task's own pinned key (the
            # template's key is refused by the pinning).
            t1 = time.monotonic()
            s = core.guest.session(prov, spec, t.host_key, f"task {t.name}", BOOT_TIMEOUT)
            try:
                s.run("true", timeout=60)
            finally:
                s.close()
            core.progress(f"task {t.name}: SSH answered in {time.monotonic() - t1:.2f} s")
        else:
            core.guest.wait_ready(prov, spec, t.host_key, f"task {t.name}")

    def wait_ready(self, name: str, *, resumed: bool = False) -> None:
        """Until the task's guest answers and (unless it was just ``resumed`` from a warm
        template or forked) cloud-init is done."""
        t = self.reg.get_task(name)
        prov = self.core.provider_of(t)
        self._ready(prov, self.core.vms.spec("task", t), t, resumed=resumed)

    def start(self, name: str, *, wait: bool = True, force: bool = False) -> None:
        core = self.core
        t = self.reg.get_task(name)
        prov = core.provider_of(t)
        spec = core.vms.spec("task", t)
        self.reg.ensure_idle("task", name)
        core.capacity.check_start(prov, spec, t, force)
        core.progress(f"task {name}: starting")
        core.vms.boot(prov, spec)
        if wait:
            s = core.guest.session(prov, spec, t.host_key, f"task {name}", timeout=BOOT_TIMEOUT)
            s.close()

    def stop(self, name: str, *, force: bool = False, timeout: float = 90) -> None:
        t = self.reg.get_task(name)
        self.core.provider_of(t).stop(self.core.vms.spec("task", t), force=force, timeout=timeout)

    def delete(self, name: str) -> None:
        self.core.vms.delete("task", name)
