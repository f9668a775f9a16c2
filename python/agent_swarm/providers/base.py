"""The provider interface: what a VM backend (libvirt/QEMU, macOS VZ, Hyper-V) must do.

Providers only define, start, stop and inspect VMs. Core code builds disks (through
:mod:`agent_swarm.native`), cloud-init seed ISOs and secrets, in the disk format the provider
lists in :attr:`Capabilities.disk_formats`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent_swarm.errors import UnsupportedByProvider
from agent_swarm.models import InstanceState, SSHEndpoint, VMSpec


@dataclass(frozen=True, slots=True)
class Capabilities:
    disk_formats: tuple[str, ...] = ("qcow2",)
    snapshots: bool = False  # disk checkpoints of a stopped VM
    memory_snapshots: bool = False  # checkpoints of a running VM, memory included
    suspend: bool = False


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


class Provider(abc.ABC):
    """A VM backend. Implementations live in ``agent_swarm.providers.<name>``.

    Every method takes the :class:`~agent_swarm.models.VMSpec` the core built (disk, seed,
    console log, forwarded port); runtime state is always read live, never stored.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def info(self) -> ProviderInfo: ...

    @abc.abstractmethod
    def check_host(self) -> None:
        """Raise :class:`~agent_swarm.errors.ProviderUnavailable` (with a hint) if unusable."""

    @abc.abstractmethod
    def define(self, spec: VMSpec) -> None:
        """Define the VM (idempotent)."""

    @abc.abstractmethod
    def start(self, spec: VMSpec) -> None: ...

    @abc.abstractmethod
    def stop(self, spec: VMSpec, *, force: bool = False, timeout: float = 90) -> None:
        """Graceful shutdown, forced after ``timeout`` seconds (at once with ``force``)."""

    @abc.abstractmethod
    def delete(self, spec: VMSpec) -> None:
        """Remove the VM and its checkpoints; "already gone" is success."""

    @abc.abstractmethod
    def status(self, spec: VMSpec) -> tuple[InstanceState, str | None]:
        """Live state and, for BROKEN/MISSING, the reason. Never raises."""

    @abc.abstractmethod
    def ssh_endpoint(self, spec: VMSpec) -> SSHEndpoint: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def checkpoint(self, spec: VMSpec, tag: str) -> None:
        raise UnsupportedByProvider("checkpoints", provider=self.name)

    def restore(self, spec: VMSpec, tag: str) -> None:
        raise UnsupportedByProvider("checkpoints", provider=self.name)

    def list_checkpoints(self, spec: VMSpec) -> list[dict[str, Any]]:
        raise UnsupportedByProvider("checkpoints", provider=self.name)
