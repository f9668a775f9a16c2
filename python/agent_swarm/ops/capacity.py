"""What this state directory's VMs take, and whether one more fits (rules in
:mod:`agent_swarm.capacity`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_swarm import capacity, procs
from agent_swarm.errors import AgentSwarmError
from agent_swarm.models import InstanceState, Project, Task, VMSpec

if TYPE_CHECKING:
    from agent_swarm.core import Core
    from agent_swarm.providers.base import Provider


class Capacity:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg

    def running_demand(
        self, exclude: tuple[str, str] | None = None, *, required: str | None = None
    ) -> capacity.Demand:
        """vCPUs and RAM this state directory's VMs take or are about to take: running ones
        (read live, one call per provider) plus those another process is creating to boot
        them (a live `create` journal entry with detail "start"), so concurrent creates see
        each other. A provider that cannot list its VMs is skipped, except ``required`` (the
        one the new VM runs on): then the check fails rather than admit it blind."""
        counted: set[tuple[str, str]] = set()
        for name in sorted(set(self.core.used_providers()) | ({required} if required else set())):
            try:
                ours = self.core.provider(name).list_ours()
            except AgentSwarmError:
                if name == required:
                    raise
                continue
            counted |= {key for key, st in ours.items() if st.state is InstanceState.RUNNING}
        for e in self.reg.journal():
            if e.op == "create" and e.detail == "start" and procs.alive(e.pid, e.pid_start):
                counted.add((e.kind, e.name))
        counted.discard(exclude or ("", ""))
        d = capacity.Demand()
        for kind, name in sorted(counted):
            try:
                vm = self.core.vms.row(kind, name)
            except AgentSwarmError:
                continue  # an orphan VM, or a create not registered yet
            d = d + capacity.Demand(vm.cpus, vm.memory_mib, 1)
        return d

    def check(
        self,
        new: capacity.Demand,
        *,
        what: str,
        force: bool = False,
        exclude: tuple[str, str] | None = None,
        provider: str | None = None,
    ) -> None:
        if force:
            return
        running = self.running_demand(exclude, required=provider)
        capacity.check(capacity.host(), running, new, capacity.limits(), what=what)

    def check_start(
        self, provider: Provider, spec: VMSpec, vm: Project | Task, force: bool
    ) -> None:
        """Capacity for booting an existing, stopped VM (its disk exists already)."""
        if provider.status(spec).state is not InstanceState.RUNNING:
            self.check(
                capacity.Demand(vm.cpus, vm.memory_mib, 0),
                what=f"starting {spec.kind} {spec.name}",
                force=force,
                exclude=(spec.kind, spec.name),
                provider=vm.provider,
            )

    def check_new_or_undo(self, kind: str, vm: Project | Task, force: bool) -> None:
        """Capacity for a VM just registered (its journal entry makes concurrent creates
        count it); on refusal the registration is undone."""
        try:
            self.check(
                capacity.Demand(vm.cpus, vm.memory_mib, 1),
                what=f"creating {kind} {vm.name}",
                force=force,
                exclude=(kind, vm.name),
                provider=vm.provider,
            )
        except BaseException:
            self.core.vms.rollback(kind, vm.name)
            raise
