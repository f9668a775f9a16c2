"""The provider interface: what a VM backend (libvirt/QEMU, macOS VZ, Hyper-V) must do.

Providers only define, start, stop and inspect VMs. Core code builds disks (through
:mod:`agent_swarm.native`), cloud-init seed ISOs and secrets, in the disk format the provider
lists in :attr:`Capabilities.disk_formats`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

from agent_swarm.errors import UnsupportedByProvider
from agent_swarm.models import InstanceState, SSHEndpoint


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
    """A VM backend. Implementations live in ``agent_swarm.providers.<name>``."""

    name: ClassVar[str]

    @abc.abstractmethod
    def info(self) -> ProviderInfo: ...

    @abc.abstractmethod
    def check_host(self) -> None:
        """Raise :class:`~agent_swarm.errors.ProviderUnavailable` (with a hint) if unusable."""

    @abc.abstractmethod
    def create(self, name: str) -> None:
        """Define the VM (idempotent)."""

    @abc.abstractmethod
    def start(self, name: str) -> None: ...

    @abc.abstractmethod
    def stop(self, name: str, *, force: bool = False, timeout: float = 60) -> None: ...

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove the VM; "already gone" is success."""

    @abc.abstractmethod
    def status(self, name: str) -> tuple[InstanceState, str | None]:
        """Live state and, for BROKEN/MISSING, the reason. Never raises."""

    @abc.abstractmethod
    def ssh_endpoint(self, name: str) -> SSHEndpoint: ...

    def checkpoint(self, name: str, tag: str) -> None:
        raise UnsupportedByProvider("checkpoints", provider=self.name)

    def restore(self, name: str, tag: str) -> None:
        raise UnsupportedByProvider("checkpoints", provider=self.name)
