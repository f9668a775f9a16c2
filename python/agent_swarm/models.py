"""Plain records shared by the registry, the providers and the CLI."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

GUEST_USER = "worker"  # the login user in every guest (cloud-init creates it)


@dataclass(frozen=True, slots=True)
class BaseImage:
    name: str
    path: str
    format: str
    virtual_size: int
    source: str
    sha256: str | None
    created_at: str


@dataclass(frozen=True, slots=True)
class Project:
    name: str
    base_image: str
    provider: str
    cpus: int
    memory_mib: int
    disk_gib: int
    network: str
    host_key: str
    created_at: str
    host_access: bool = False


@dataclass(frozen=True, slots=True)
class Generation:
    """A sealed, read-only template disk of a project, and how it was sealed."""

    project: str
    generation: int
    path: str
    created_at: str
    format: str = "qcow2"
    provider: str = ""
    cpus: int | None = None  # the machine shape the template was sealed with
    memory_mib: int | None = None
    disk_gib: int | None = None
    memory_image: str | None = None  # a warm template's saved RAM/device state (issue 10)
    host_key: str | None = None  # the template's SSH host key, where clones keep it


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """An operation in progress (or interrupted, when its process is gone)."""

    id: int
    op: str
    kind: str
    name: str
    step: str
    detail: str
    pid: int
    pid_start: str
    started_at: str
    provider: str = ""  # the VM's provider ("" in entries older than schema 4)


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    project: str
    generation: int
    provider: str
    cpus: int
    memory_mib: int
    network: str
    host_key: str
    created_at: str
    host_access: bool = False
    warm_from: str = ""  # the warm template it resumed from ("" : booted cold)


@dataclass(frozen=True, slots=True)
class EnvVarRecord:
    """One encrypted environment variable as stored (never the plaintext value)."""

    scope: str  # '' = global, else a project name
    name: str
    nonce: bytes
    ciphertext: bytes
    updated_at: str


class InstanceState(enum.StrEnum):
    """Runtime state, always read live from the provider."""

    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    STARTING = "starting"
    STOPPING = "stopping"
    MISSING = "missing"  # registered, but the provider has no such VM
    BROKEN = "broken"  # the provider reports something inconsistent; see the reason


@dataclass(frozen=True, slots=True)
class SSHEndpoint:
    host: str
    port: int
    user: str


@dataclass(frozen=True, slots=True)
class VMSpec:
    """Everything a provider needs to define one VM (built by the core, not the provider)."""

    kind: str  # "project" | "task"
    name: str
    cpus: int
    memory_mib: int
    disk: Path  # the VM's disk, in the provider's format (Capabilities.disk_format)
    seed: Path  # cloud-init NoCloud seed (attached read-only)
    serial_log: Path
    ssh_port: int  # loopback port forwarded to the guest's port 22 (user networking)
    network: str = "user"  # "user" (default) | "nat"
    # user networking: may the guest reach this host's loopback (and so its siblings)?
    host_access: bool = False
    # Warm templates and clones (issue 10): guest RAM backed by this file. The template maps
    # it shared (its RAM *is* the file); a clone maps it privately, copy-on-write.
    memory_file: Path | None = None
    memory_shared: bool = False
    incoming: bool = False  # start waiting for a saved device state (a warm clone)
    mac: str | None = None  # a fixed MAC (a clone keeps its template's); None: the provider's
    machine: str | None = None  # an exact machine type (a clone's is its template's)
