"""The composition root: one object that builds and owns the registry, the layout, the
providers and the services (operations) for one command.

    core = Core.open(progress=print)
    core.tasks.create("myapp", "fix-login")
    core.close()

Services each have one job (``agent_swarm.ops``); they reach each other through the core.
Providers are created lazily by the name a VM's row records, so a command touching only
libvirt VMs never loads another provider, and ``list`` of no VMs loads none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

from agent_swarm import paths
from agent_swarm.journal import Operation
from agent_swarm.layout import Layout

if TYPE_CHECKING:
    from agent_swarm.guest import Guest
    from agent_swarm.models import Project, Task
    from agent_swarm.ops.capacity import Capacity
    from agent_swarm.ops.checkpoints import Checkpoints
    from agent_swarm.ops.fork import Fork
    from agent_swarm.ops.gc import GC
    from agent_swarm.ops.images import BaseImages
    from agent_swarm.ops.projects import Projects
    from agent_swarm.ops.seal import Seal
    from agent_swarm.ops.tasks import Tasks
    from agent_swarm.ops.views import Views
    from agent_swarm.ops.vms import VMs
    from agent_swarm.ops.warm import Warm
    from agent_swarm.providers.base import Provider
    from agent_swarm.registry import Registry

Progress = Callable[[str], None]


class Core:
    def __init__(
        self,
        registry: Registry,
        *,
        progress: Progress | None = None,
        layout: Layout | None = None,
        providers: dict[str, Provider] | None = None,
        write_ssh_config: bool = True,
    ) -> None:
        self.reg = registry
        self.layout = layout or Layout.default()
        self.progress: Progress = progress or (lambda s: None)
        self._providers: dict[str, Provider] = dict(providers or {})
        # Bulk workers leave ssh_config to the bulk command, which writes it once.
        self.write_ssh_config = write_ssh_config
        self.noticed = False  # the provider's start-up notice was shown

    # Services are built on first use: `list` imports no seal, guest or SSH code.
    @cached_property
    def guest(self) -> Guest:
        from agent_swarm.guest import Guest

        return Guest(self)

    @cached_property
    def images(self) -> BaseImages:
        from agent_swarm.ops.images import BaseImages

        return BaseImages(self)

    @cached_property
    def vms(self) -> VMs:
        from agent_swarm.ops.vms import VMs

        return VMs(self)

    @cached_property
    def capacity(self) -> Capacity:
        from agent_swarm.ops.capacity import Capacity

        return Capacity(self)

    @cached_property
    def projects(self) -> Projects:
        from agent_swarm.ops.projects import Projects

        return Projects(self)

    @cached_property
    def seal(self) -> Seal:
        from agent_swarm.ops.seal import Seal

        return Seal(self)

    @cached_property
    def tasks(self) -> Tasks:
        from agent_swarm.ops.tasks import Tasks

        return Tasks(self)

    @cached_property
    def gc(self) -> GC:
        from agent_swarm.ops.gc import GC

        return GC(self)

    @cached_property
    def checkpoints(self) -> Checkpoints:
        from agent_swarm.ops.checkpoints import Checkpoints

        return Checkpoints(self)

    @cached_property
    def fork(self) -> Fork:
        from agent_swarm.ops.fork import Fork

        return Fork(self)

    @cached_property
    def warm(self) -> Warm:
        from agent_swarm.ops.warm import Warm

        return Warm(self)

    @cached_property
    def views(self) -> Views:
        from agent_swarm.ops.views import Views

        return Views(self)

    @classmethod
    def open(cls, *, progress: Progress | None = None, write_ssh_config: bool = True) -> Core:
        from agent_swarm.registry import Registry

        paths.ensure_home()
        return cls(
            Registry(paths.registry_path()), progress=progress, write_ssh_config=write_ssh_config
        )

    # ---- providers ----
    def provider(self, name: str) -> Provider:
        """The named provider, created and checked on first use (fails before anything is
        created when this host cannot run it)."""
        p = self._providers.get(name)
        if p is None:
            from agent_swarm.providers import get_provider

            p = get_provider(name)
            try:
                p.check_host()
            except BaseException:
                p.close()
                raise
            self._providers[name] = p
        return p

    def provider_of(self, vm: Project | Task) -> Provider:
        return self.provider(vm.provider)

    def default_provider_name(self) -> str:
        from agent_swarm.providers import default_provider_name

        return default_provider_name()

    def used_providers(self) -> list[str]:
        """Providers named by any VM row (what `list`, capacity and doctor ask)."""
        names = {p.provider for p in self.reg.list_projects()}
        names |= {t.provider for t in self.reg.list_tasks()}
        return sorted(names)

    def loaded_names(self) -> list[str]:
        return sorted(self._providers)

    # ---- journaled operations, by journal name (doctor dispatches through this) ----
    def operation(self, op: str) -> Operation:
        ops: dict[str, Operation] = {
            "create": self.vms.create_op,
            "delete": self.vms.delete_op,
            "seal": self.seal.op,
            "gc": self.gc.op,
            "restore": self.checkpoints.op,
            "warm": self.warm.op,
            "fork": self.fork.op,
        }
        return ops.get(op) or _Plain(self, op)

    def close_providers(self) -> None:
        for p in self._providers.values():
            with contextlib.suppress(Exception):
                p.close()
        self._providers.clear()

    def close(self) -> None:
        self.close_providers()
        self.reg.close()

    def __enter__(self) -> Core:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Plain(Operation):
    """An operation with nothing to undo (``doctor`` itself): its entry is cleared."""

    steps = ("begin",)

    def __init__(self, core: Core, op: str) -> None:
        super().__init__(core)
        self.op = op  # type: ignore[misc]
