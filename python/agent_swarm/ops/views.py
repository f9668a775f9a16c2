"""VMs as `list` and `status` show them: registry identity + live provider state, with one
``list_ours`` call per provider (100 VMs must not cost 100 round trips)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent_swarm import disks, procs
from agent_swarm.errors import AgentSwarmError
from agent_swarm.models import InstanceState, JournalEntry, Project, Task
from agent_swarm.providers.base import VMStatus

if TYPE_CHECKING:
    from agent_swarm.core import Core

Live = dict[str, dict[tuple[str, str], VMStatus] | str]  # provider -> states, or why not


@dataclass(frozen=True)
class VMView:
    kind: str
    name: str
    project: str
    generation: int | None
    state: str
    reason: str | None
    ssh: str | None
    disk_bytes: int | None
    cpus: int
    memory_mib: int


class Views:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg

    def _live(self, vms: list[Project | Task]) -> Live:
        out: Live = {}
        for name in sorted({vm.provider for vm in vms}):
            try:
                out[name] = self.core.provider(name).list_ours()
            except AgentSwarmError as exc:  # unreachable, or a name no provider has
                out[name] = f"provider {name} unavailable: {exc.message}"
        return out

    def _view(
        self,
        kind: str,
        vm: Project | Task,
        project: str,
        gen: int | None,
        live: Live,
        journal: dict[tuple[str, str], JournalEntry],
        ports: dict[tuple[str, str], int],
    ) -> VMView:
        states = live.get(vm.provider)
        if isinstance(states, dict):
            st = states.get(
                (kind, vm.name), VMStatus(InstanceState.MISSING, "no VM in the provider")
            )
            state, reason = st.state, st.reason
        else:
            state, reason = InstanceState.BROKEN, states
        spec = None
        if isinstance(states, dict):
            fmt = self.core.vms.disk_format(vm.provider)
            spec = self.core.vms.spec(kind, vm, fmt=fmt, port=ports.get((kind, vm.name), 0))
        disk_bytes = None
        if spec is not None:
            backend = disks.backend_for(fmt)
            disk_bytes = backend.actual_size(spec.disk)  # one header read when all is well
            if disk_bytes is None:
                try:
                    backend.check(spec.disk)  # why not, as one line
                except (OSError, ValueError, AgentSwarmError) as exc:
                    if state is not InstanceState.MISSING:
                        state, reason = InstanceState.BROKEN, f"disk: {exc}"
        entry = journal.get((kind, vm.name))
        if entry is not None:
            if procs.alive(entry.pid, entry.pid_start):
                reason = f"{entry.op} in progress"
            else:
                state = InstanceState.BROKEN
                reason = (
                    f"interrupted {entry.op} (step {entry.step}); run `agent-swarm doctor --fix`"
                )
        ssh = None
        # Only a forwarded port is shown: a run-time address would cost the provider a call
        # per VM (`ssh` asks it when connecting).
        if state is InstanceState.RUNNING and spec is not None and spec.ssh_port:
            with contextlib.suppress(AgentSwarmError, OSError):
                ep = self.core.provider(vm.provider).ssh_endpoint(spec)
                ssh = f"{ep.host}:{ep.port}"
        return VMView(
            kind,
            vm.name,
            project,
            gen,
            state.value,
            reason,
            ssh,
            disk_bytes,
            vm.cpus,
            vm.memory_mib,
        )

    def _rows(self) -> tuple[dict[tuple[str, str], JournalEntry], dict[tuple[str, str], int]]:
        """The journal and every loopback port, one query each (not one per VM)."""
        journal = {(e.kind, e.name): e for e in self.reg.journal()}
        ports = {(kind, name): port for port, kind, name in self.reg.ports()}
        return journal, ports

    def tasks(self, project: str | None = None) -> list[VMView]:
        tasks = self.reg.list_tasks(project)
        live = self._live(list(tasks))
        journal, ports = self._rows()
        return [self._view("task", t, t.project, t.generation, live, journal, ports) for t in tasks]

    def projects(self) -> list[VMView]:
        projects = self.reg.list_projects()
        live = self._live(list(projects))
        journal, ports = self._rows()
        out = []
        for p in projects:
            latest = self.reg.latest_generation(p.name)
            gen = latest.generation if latest else None
            out.append(self._view("project", p, p.name, gen, live, journal, ports))
        return out
