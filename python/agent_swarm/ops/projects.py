"""Projects: the VM a user sets up once (repo, services, tools), then seals into template
generations that tasks clone (sealing: :mod:`agent_swarm.ops.seal`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_swarm.errors import ConfigError, InvalidState
from agent_swarm.guest import new_host_key
from agent_swarm.models import Project
from agent_swarm.names import validate_name
from agent_swarm.ops.vms import check_space

if TYPE_CHECKING:
    from agent_swarm.core import Core


class Projects:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg

    def create(
        self,
        name: str,
        *,
        base: str | None = None,
        cpus: int = 2,
        memory_mib: int = 2048,
        disk_gib: int = 20,
        network: str | None = None,
        host_access: bool | None = None,
        provider: str | None = None,
        wait: bool = True,
        start: bool = True,
        force: bool = False,
    ) -> Project:
        validate_name(name, "project name")
        core = self.core
        # First: no point in the rest if this host cannot run the provider's VMs.
        prov = core.provider(provider or core.default_provider_name())
        base_img = self.reg.get_base_image(base) if base else core.images.default()
        if disk_gib << 30 < base_img.virtual_size:
            raise ConfigError(
                f"--disk {disk_gib}G is smaller than the base image "
                f"({base_img.virtual_size / (1 << 30):.1f} GiB)",
                hint="give a larger --disk",
            )
        check_space(f"cannot create project {name}")
        if host_access is None:
            from agent_swarm import settings  # here: `list` & co. never read config.toml

            host_access = settings.for_project(name).host_access
        parent = core.images.source_for(base_img, prov.capabilities.disk_format)
        host = new_host_key("project", name)
        entry, p = core.vms.register(
            prov,
            "project",
            name,
            {
                "base_image": base_img.name,
                "provider": prov.name,
                "cpus": cpus,
                "memory_mib": memory_mib,
                "disk_gib": disk_gib,
                "network": network or prov.capabilities.networks[0],
                "host_access": host_access,
                "host_key": host.public_openssh,
            },
            start=start,
        )
        assert isinstance(p, Project)
        with core.vms.create_op.run("project", name, entry=entry) as op:
            if start:
                # After registering (with a live journal entry): concurrent creates count
                # each other, so together they cannot oversubscribe the host.
                core.capacity.check_new_or_undo("project", p, force)
            core.progress(f"project {name}: creating its disk on base {base_img.name}")
            spec = core.vms.materialize(
                prov, "project", p, parent, host, size=disk_gib << 30, first_boot_setup=True, op=op
            )
            if start:  # still journaled: counted by concurrent capacity checks until it runs
                core.progress(f"project {name}: booting")
                core.vms.boot(prov, spec)
        if start and wait:
            core.guest.wait_ready(prov, spec, p.host_key, f"project {name}")
        return p

    def start(
        self, name: str, *, wait: bool = True, force: bool = False, in_op: bool = False
    ) -> None:
        """Boot the project's disk as it is (after a seal: the fresh clone of the newest
        generation the seal left it on)."""
        core = self.core
        p = self.reg.get_project(name)
        prov = core.provider_of(p)
        spec = core.vms.spec("project", p, fmt=prov.capabilities.disk_format)
        if not in_op:
            self.reg.ensure_idle("project", name)
        core.capacity.check_start(prov, spec, p, force)
        core.progress(f"project {name}: starting")
        core.vms.boot(prov, spec)
        if wait:
            core.guest.wait_ready(prov, spec, p.host_key, f"project {name}")

    def stop(self, name: str, *, timeout: float = 120, seal: bool = True) -> int | None:
        """Stop the project; with ``seal`` make its disk the next template generation.
        Returns the new generation number (None when nothing was sealed)."""
        if seal:
            return self.core.seal.seal(name, timeout=timeout)
        p = self.reg.get_project(name)
        prov = self.core.provider_of(p)
        prov.stop(self.core.vms.spec("project", p), timeout=timeout)
        return None

    def delete(self, name: str) -> None:
        tasks = self.reg.list_tasks(name)
        if tasks:
            raise InvalidState(
                f"project {name!r} still has task(s): " + ", ".join(t.name for t in tasks),
                hint=f"delete them first: `agent-swarm bulk delete --project {name}`",
            )
        self.core.vms.delete("project", name)
