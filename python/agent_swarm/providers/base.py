"""The provider contract: everything the core knows of a VM backend.

A provider (libvirt/QEMU on Linux, Virtualization.framework on macOS, Hyper-V on Windows, the
fake in ``tests/fakes``) only defines, starts, stops and inspects VMs. The core builds their
disks (in :attr:`Capabilities.disk_format`, through :mod:`agent_swarm.disks`), cloud-init
seeds, keys and registry rows, and branches on nothing but the declared
:class:`Capabilities` — never on a provider's name or class (lima ``pkg/driver``, multipass
``VirtualMachineFactory``).

Every method takes the :class:`~agent_swarm.models.VMSpec` the core built; runtime state is
always read live from the provider, never stored by the core.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from agent_swarm.errors import UnsupportedByProvider
from agent_swarm.models import InstanceState, SSHEndpoint, VMSpec


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can do; the core's only source of provider differences."""

    # The disk format the core builds this provider's base, generation and VM disks in:
    # "qcow2" (overlays), "raw" (clonefile/reflink clones) or "vhdx" (differencing disks).
    disk_format: str = "qcow2"
    snapshots: bool = False  # disk checkpoints of a stopped VM
    memory_snapshots: bool = False  # checkpoints of a running VM, memory included
    suspend: bool = False
    # The guest's SSH address is known only at run time (a DHCP lease): the core allocates
    # no loopback port and resolves the address on every connection attempt.
    dynamic_address: bool = False
    warm_clones: bool = False  # a task can resume from a template's memory image
    networks: tuple[str, ...] = ("user",)  # accepted VMSpec.network values, default first
    host_needs: tuple[str, ...] = ()  # what it needs on the host (shown by `providers`)


@dataclass(frozen=True, slots=True)
class VMStatus:
    """One VM as the provider sees it."""

    state: InstanceState
    reason: str | None = None  # why, for BROKEN/MISSING
    # How people find it with the provider's own tools ("domain agent-swarm-1a2b3c-task-x");
    # doctor names orphans by it.
    label: str = ""


@dataclass(frozen=True, slots=True)
class Check:
    """One line of a host check: what was looked at, whether it is fine, how to fix it."""

    name: str
    ok: bool
    detail: str
    hint: str | None = None
    required: bool = True


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Whether this host can run a provider, and why (not)."""

    provider: str
    description: str
    available: bool
    checks: tuple[Check, ...] = field(default=())
    default: bool = False

    @property
    def reason(self) -> str | None:
        """The first failing required check, as one line."""
        for c in self.checks:
            if c.required and not c.ok:
                return f"{c.name}: {c.detail}"
        return None


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    name: str
    version: str
    capabilities: Capabilities


class GuestSession(Protocol):
    """A command channel into a running guest (SSH unless the provider offers its own)."""

    def run(self, command: str, timeout: float) -> tuple[int, str, str]:
        """Run ``command`` with ``sh -c``; (exit code, stdout, stderr)."""
        ...

    def close(self) -> None: ...


class GuestAgent(Protocol):
    """A channel to an agent inside the guest that needs no network and no login (QEMU's
    guest agent over virtio-serial): how a resumed warm clone gets its new identity before
    anything can log into it."""

    def ping(self, timeout: float) -> bool:
        """Does the agent answer within ``timeout`` seconds?"""
        ...

    def exec(
        self,
        argv: list[str],
        stdin: bytes,
        timeout: float,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` (no shell) with ``stdin``; (exit code, stdout, stderr). Secrets go in
        ``stdin``, never in ``argv``. ``meanwhile`` runs once the command has started."""
        ...

    def set_time(self) -> None:
        """Set the guest's clock (and hardware clock) to the host's now."""
        ...


class Provider(abc.ABC):
    """A VM backend. Implementations live in ``agent_swarm.providers.<name>``."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    # ---- host ----
    @abc.abstractmethod
    def info(self) -> ProviderInfo: ...

    @abc.abstractmethod
    def check_host(self) -> None:
        """Raise :class:`~agent_swarm.errors.ProviderUnavailable` (with a hint) if unusable."""

    def startup_notice(self) -> str | None:
        """One line the user should read once before the first VM boots (e.g. "no KVM:
        running under emulation, expect slow boots"), or None."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # ---- lifecycle ----
    @abc.abstractmethod
    def define(self, spec: VMSpec) -> None:
        """Define (or redefine) the VM; idempotent. Its disk and seed exist already."""

    @abc.abstractmethod
    def start(self, spec: VMSpec) -> None:
        """Boot it; on a running VM, repair what :meth:`runtime_problem` reports."""

    @abc.abstractmethod
    def stop(self, spec: VMSpec, *, force: bool = False, timeout: float = 90) -> None:
        """Graceful shutdown, forced after ``timeout`` seconds (at once with ``force``)."""

    @abc.abstractmethod
    def delete(self, spec: VMSpec) -> None:
        """Power off and remove the VM and its checkpoints; "already gone" is success.
        The VM's files (disk, seed) are the core's."""

    @abc.abstractmethod
    def status(self, spec: VMSpec) -> VMStatus:
        """Live state and, for BROKEN/MISSING, the reason. Never raises."""

    @abc.abstractmethod
    def list_ours(self) -> dict[tuple[str, str], VMStatus]:
        """Every VM of this state directory the provider knows, keyed by (kind, name), in
        one call (``list`` of 100 VMs must not cost 100 round trips)."""

    def owner_of(self, kind: str, name: str) -> str | None:
        """The state directory a VM listed by :meth:`list_ours` was created for, where the
        provider records it (None: unknown). Lets doctor leave another directory's VMs
        alone when names collide."""
        return None

    def runtime_problem(self, spec: VMSpec) -> str | None:
        """Why a running VM is not usable although it runs (e.g. its network helper died),
        or None. :meth:`start` repairs it. Cheap when all is well."""
        return None

    # ---- access ----
    @abc.abstractmethod
    def ssh_endpoint(self, spec: VMSpec) -> SSHEndpoint:
        """Where the guest's sshd answers now. With ``dynamic_address`` this may raise
        :class:`~agent_swarm.errors.Timeout` ("no address yet"): callers retry."""

    def guest_session(self, spec: VMSpec) -> GuestSession | None:
        """A provider's own command channel into the guest (vsock, a test double), used for
        readiness and identity reset instead of SSH. None: use SSH."""
        return None

    def guest_agent(self, spec: VMSpec) -> GuestAgent | None:
        """The guest agent of a running VM, where the provider has one (else None)."""
        return None

    # ---- warm templates and clones (Capabilities.warm_clones) ----
    def warm_fingerprint(self, spec: VMSpec) -> dict[str, str]:
        """What a saved state of a VM shaped like ``spec`` depends on (emulator and firmware
        versions, the exact machine type, CPU model, device layout); needs no defined VM. A
        clone resumes from a template only when both fingerprints are equal. ``machine`` is
        the exact machine type the provider would run (the template's and its clones'
        :attr:`VMSpec.machine`), when it has such a thing."""
        raise UnsupportedByProvider("warm clones", provider=self.name)

    def save_running_state(
        self,
        spec: VMSpec,
        state: Path,
        *,
        shared_memory: bool = True,
        keep_running: bool = False,
        while_paused: Callable[[], None] | None = None,
    ) -> float:
        """Pause the running VM and write its state to ``state``; the seconds it was paused.

        ``shared_memory``: the VM was defined with ``memory_shared`` and its RAM stays in
        :attr:`VMSpec.memory_file` (a warm template: the state is only device state); else
        the RAM goes into ``state`` too (a fork). Then the VM is powered off, or with
        ``keep_running`` resumed, after ``while_paused`` ran (its disks are flushed and
        unchanging then: the time to copy them)."""
        raise UnsupportedByProvider("warm clones", provider=self.name)

    def resume_from_state(self, spec: VMSpec, state: Path, *, shared_memory: bool = True) -> None:
        """Start the VM (defined with ``incoming``) from ``state`` (and, with
        ``shared_memory``, the RAM file it maps privately); running, with its network, when
        this returns. On failure it is off."""
        raise UnsupportedByProvider("warm clones", provider=self.name)

    # ---- checkpoints ----
    def checkpoint(self, spec: VMSpec, tag: str) -> None:
        raise UnsupportedByProvider("checkpoints", provider=self.name)

    def restore(self, spec: VMSpec, tag: str) -> None:
        raise UnsupportedByProvider("checkpoints", provider=self.name)

    def list_checkpoints(self, spec: VMSpec) -> list[dict[str, Any]]:
        """[{"name", "created" (epoch seconds), "state"}], oldest first."""
        raise UnsupportedByProvider("checkpoints", provider=self.name)
