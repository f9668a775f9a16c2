"""VMs in general: specs from registry rows, the journaled create and delete, boots, access.

A VM is materialized in this order, all or nothing (a failure removes everything again,
the registry row too): row + port + journal entry in one transaction, disk (a clone of its
parent in the provider's format), seed with a fresh pinned host key, provider definition,
one ssh_config write.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from agent_swarm import paths
from agent_swarm.errors import (
    AgentSwarmError,
    InstanceNotFound,
    InvalidState,
    ProjectNotFound,
)
from agent_swarm.journal import Op, Operation, Recovery
from agent_swarm.models import InstanceState, JournalEntry, Project, SSHEndpoint, Task, VMSpec
from agent_swarm.providers.base import VMStatus

if TYPE_CHECKING:
    import paramiko

    from agent_swarm.core import Core
    from agent_swarm.providers.base import Provider
    from agent_swarm.ssh import keys

PORT_RANGE = range(41000, 49000)
MIN_FREE_BYTES = 64 << 20  # a new VM writes its disk, seed and logs; guests write more


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def candidate_ports() -> Iterator[int]:
    return (p for p in PORT_RANGE if _port_free(p))


def disk_error(exc: OSError, what: str) -> AgentSwarmError:
    """An OSError from creating a VM's files, as a one-line user error."""
    where = exc.filename or paths.home()
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return AgentSwarmError(
            f"{what}: no space left on the device of {where}",
            hint=f"free some space (df -h {paths.home()}), or set AGENT_SWARM_HOME elsewhere",
        )
    return AgentSwarmError(f"{what}: {exc.strerror or exc} ({where})")


def check_space(what: str, need: int = 0) -> None:
    """Refuse before creating anything when the state directory's filesystem is (nearly) full:
    a half-created VM could not even be rolled back there (SQLite needs space to delete).
    ``need``: bytes the operation writes besides (a fork's saved memory)."""
    home = paths.ensure_home()
    free = shutil.disk_usage(home).free
    if free < MIN_FREE_BYTES + need:
        raise AgentSwarmError(
            f"{what}: only {free >> 20} MiB free on the filesystem of {home}",
            hint=f"free some space (df -h {home}), or set AGENT_SWARM_HOME elsewhere",
        )


class CreateOp(Operation):
    op = "create"
    steps = ("begin", "registered", "port", "disk", "seed", "defined")

    def __init__(self, core: Core, vms: VMs) -> None:
        super().__init__(core)
        self.vms = vms

    def recover(self, e: JournalEntry) -> Recovery:
        def clear() -> None:
            self.reg.journal_end(e.id)

        # "begin" without a row: killed before registering (entries older than schema 4;
        # since then the row and the entry, at step "registered", are one transaction).
        # Any later step: remove what is there, row or not (a rollback may have removed
        # the row before it was killed).
        if e.step == "begin" and not self._row_created_by(e):
            return Recovery("; nothing was created", "clear it", clear)

        def remove() -> None:
            self.vms.remove(e.kind, e.name, None, None, provider_name=e.provider or None)
            clear()

        return Recovery("", "remove the half-created VM", remove)

    def _row_created_by(self, e: JournalEntry) -> bool:
        """Did the interrupted create `e` insert the registry row of that name (it may have
        been killed between the insert and recording the step)?"""
        try:
            row = self.vms.row(e.kind, e.name)
        except AgentSwarmError:
            return False
        return row.created_at >= e.started_at


class DeleteOp(Operation):
    op = "delete"
    steps = ("begin", "undefined", "files-removed")

    def __init__(self, core: Core, vms: VMs) -> None:
        super().__init__(core)
        self.vms = vms

    def recover(self, e: JournalEntry) -> Recovery:
        def finish() -> None:
            self.vms.remove(e.kind, e.name, None, None, provider_name=e.provider or None)
            self.reg.journal_end(e.id)

        return Recovery("", "finish deleting it", finish)


class VMs:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg
        self.layout = core.layout
        self.create_op = CreateOp(core, self)
        self.delete_op = DeleteOp(core, self)

    # ---- rows and specs ----
    def row(self, kind: str, name: str) -> Project | Task:
        return self.reg.get_project(name) if kind == "project" else self.reg.get_task(name)

    def kind_of(self, name: str) -> str:
        """ "task" or "project" for a VM name (tasks first, as `ssh`/`run` address tasks)."""
        for kind in ("task", "project"):
            with contextlib.suppress(AgentSwarmError):
                self.row(kind, name)
                return kind
        raise InstanceNotFound(f"no task or project named {name!r}", hint="see `agent-swarm list`")

    def disk_format(self, provider_name: str) -> str:
        """The disk format of a provider's VMs (its declared capability)."""
        return self.core.provider(provider_name).capabilities.disk_format

    def spec(
        self, kind: str, vm: Project | Task, *, fmt: str | None = None, port: int | None = None
    ) -> VMSpec:
        """``port``: the VM's loopback port when the caller read them all already (list)."""
        if fmt is None:
            try:
                fmt = self.disk_format(vm.provider)
            except AgentSwarmError:  # provider unavailable: views still show the disk
                from agent_swarm.layout import FORMAT_OF_SUFFIX

                found = self.layout.disks_in(kind, vm.name)
                fmt = FORMAT_OF_SUFFIX[found[0].suffix] if found else "qcow2"
        L = self.layout
        spec = VMSpec(
            kind=kind,
            name=vm.name,
            cpus=vm.cpus,
            memory_mib=vm.memory_mib,
            disk=L.disk(kind, vm.name, fmt),
            seed=L.seed(kind, vm.name),
            serial_log=L.serial_log(kind, vm.name),
            ssh_port=(self.reg.port_of(kind, vm.name) if port is None else port) or 0,
            network=vm.network,
            host_access=vm.host_access,
        )
        warm_from = getattr(vm, "warm_from", "")
        if warm_from and (meta := self.core.warm.meta_of(warm_from)) is not None:
            spec = self.core.warm.resumed_spec(spec, Path(warm_from), meta)
        return spec

    def stub_spec(self, kind: str, name: str) -> VMSpec:
        """Enough of a VM's spec to find and remove what is left of it."""
        if kind == "warm":  # a warm template's VM: "<project>.<generation>"
            project, _, n = name.rpartition(".")
            return self.core.warm.stub_spec(project, int(n) if n.isdigit() else 0)
        d = self.layout.vm_dir(kind, name)
        return VMSpec(
            kind=kind, name=name, cpus=1, memory_mib=256, disk=d, seed=d, serial_log=d, ssh_port=0
        )

    # ---- create ----
    def register(
        self,
        provider: Provider,
        kind: str,
        name: str,
        fields: dict[str, object],
        *,
        start: bool,
        op: str = "create",
        detail: str | None = None,
    ) -> tuple[int, Project | Task]:
        """Row, loopback port (unless the provider's address is dynamic) and journal entry,
        in one transaction."""
        caps = provider.capabilities
        network = str(fields.get("network") or caps.networks[0])
        if network not in caps.networks:
            from agent_swarm.errors import ConfigError

            raise ConfigError(
                f"the {provider.name} provider has no network {network!r}",
                hint=f"choose one of: {', '.join(caps.networks)}",
            )
        ports = None if caps.dynamic_address else candidate_ports()
        return self.reg.register_vm(
            kind,
            name,
            fields,
            ports=ports,
            op=op,
            detail=("start" if start else "") if detail is None else detail,
        )

    def materialize(
        self,
        provider: Provider,
        kind: str,
        vm: Project | Task,
        parent: Path,
        host: keys.KeyPair,
        *,
        size: int | None,
        first_boot_setup: bool,
        op: Op,
        adjust: Callable[[VMSpec], VMSpec] | None = None,
    ) -> VMSpec:
        """Disk, seed and provider definition for a registered VM. All or nothing: on any
        failure everything is removed again, the registry row too."""
        from agent_swarm import disks
        from agent_swarm.guest import write_seed

        op.step("registered")
        op.step("port")
        try:
            spec = self.spec(kind, vm)
            d = self.layout.vm_dir(kind, vm.name)
            if d.exists():
                shutil.rmtree(d)  # leftovers of a crashed create of a VM with this name
            d.mkdir(parents=True, mode=0o700)
            disks.backend_for(provider.capabilities.disk_format).overlay(
                spec.disk, parent, size=size
            )
            op.step("disk")
            project = vm.name if kind == "project" else vm.project  # type: ignore[union-attr]
            write_seed(spec, host, project=project, first_boot_setup=first_boot_setup)
            op.step("seed")
            if adjust is not None:
                spec = adjust(spec)
            provider.define(spec)
            op.step("defined")
            self.refresh_ssh_config()
        except OSError as exc:
            self.rollback(kind, vm.name)
            raise disk_error(exc, f"cannot create {kind} {vm.name}") from exc
        except BaseException:
            self.rollback(kind, vm.name)
            raise
        return spec

    def rollback(self, kind: str, name: str) -> None:
        self.remove(kind, name, None, None, best_effort=True)

    # ---- delete ----
    def delete(self, kind: str, name: str) -> None:
        vm = self.row(kind, name)
        with self.delete_op.run(kind, name, provider=vm.provider) as op:
            self.remove(kind, name, self.spec(kind, vm), op, provider_name=vm.provider)

    def remove(
        self,
        kind: str,
        name: str,
        spec: VMSpec | None,
        op: Op | None,
        *,
        best_effort: bool = False,
        provider_name: str | None = None,
    ) -> None:
        """Registry row, provider VM and files of a VM. Each step tolerates "already gone",
        so this also completes an interrupted create or delete (doctor); ``best_effort`` goes
        on past failures (rolling back a failed create).

        A project's row goes first, in a transaction that refuses while a task uses it, so a
        task created concurrently can never lose its template; a crash after it leaves only
        an orphan VM and files, which doctor removes. A task's row goes last.
        """
        if provider_name is None:
            with contextlib.suppress(AgentSwarmError):
                provider_name = self.row(kind, name).provider
        spec = spec or self.stub_spec(kind, name)
        guard = contextlib.suppress(Exception) if best_effort else contextlib.nullcontext()
        # Before anything changes: a provider that cannot be reached fails the removal here
        # (doctor then reports it, and nothing is half-removed), unless best effort.
        providers = self._providers_to_ask(provider_name, strict=not best_effort)

        def forget() -> None:
            with contextlib.suppress(InstanceNotFound, ProjectNotFound), guard:
                if kind == "project":
                    self.reg.remove_project(name)
                else:
                    self.reg.remove_task(name)

        if kind == "project":
            forget()
        with guard:
            for provider in providers:
                provider.delete(spec)
        if op:
            op.step("undefined")
        shutil.rmtree(self.layout.vm_dir(kind, name), ignore_errors=True)
        if op:
            op.step("files-removed")
        if kind == "task":
            forget()
        with guard:
            self.refresh_ssh_config()

    def _providers_to_ask(self, name: str | None, *, strict: bool) -> list[Provider]:
        """The VM's provider (its row's, or its journal entry's); with neither (an entry
        older than schema 4 whose row is gone), every provider used here, loaded or the
        default (a "not there" costs nothing). ``strict``: one that cannot be reached is an
        error, not skipped."""
        if name is not None:
            try:
                return [self.core.provider(name)]
            except AgentSwarmError:
                if strict:
                    raise
                return []
        used = set(self.core.used_providers())
        names = used | set(self.core.loaded_names()) | {self.core.default_provider_name()}
        out = []
        for n in sorted(names):
            try:
                out.append(self.core.provider(n))
            except AgentSwarmError:
                if strict and n in used:
                    raise
        return out

    # ---- running ----
    def boot(self, provider: Provider, spec: VMSpec) -> None:
        """Start a VM, showing the provider's start-up notice once per command."""
        notice = provider.startup_notice()
        if notice and not self.core.noticed:
            self.core.noticed = True
            self.core.progress(notice)
        provider.start(spec)

    def status(self, kind: str, name: str) -> VMStatus:
        vm = self.row(kind, name)
        return self.core.provider_of(vm).status(self.spec(kind, vm))

    def connect(self, kind: str, name: str) -> paramiko.SSHClient:
        """An SSH connection to a running VM (error with a hint when it is not running)."""
        vm = self.row(kind, name)
        provider = self.core.provider_of(vm)
        spec = self.spec(kind, vm)
        st = provider.status(spec)
        if st.state is not InstanceState.RUNNING:
            cmd = f"agent-swarm {'project ' if kind == 'project' else ''}start {name}"
            raise InvalidState(
                f"{kind} {name!r} is {st.state.value}" + (f" ({st.reason})" if st.reason else ""),
                hint=f"start it with `{cmd}`",
            )
        return self.core.guest.connect_ssh(
            provider, spec, vm.host_key, f"{kind} {name}", timeout=60, quiet=True
        )

    def endpoint(self, kind: str, name: str) -> SSHEndpoint:
        vm = self.row(kind, name)
        return self.core.provider_of(vm).ssh_endpoint(self.spec(kind, vm))

    def refresh_ssh_config(self, *, force: bool = False) -> Path:
        """Rewrite ~/.agent-swarm/ssh_config and the pinned known_hosts from the registry
        (skipped in bulk workers: the bulk command writes it once at the end)."""
        from agent_swarm.fsutil import file_lock
        from agent_swarm.ssh import config

        if not (self.core.write_ssh_config or force):
            return config.config_path()
        # Short lock: concurrent processes each render after their own commit; without it a
        # slower writer could put back a config that misses the other's VM.
        with file_lock(paths.home() / ".ssh_config.lock"):
            return config.write(self.reg)
