"""Plain records shared by the registry, the providers and the CLI."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
    created_at: str


@dataclass(frozen=True, slots=True)
class Generation:
    project: str
    generation: int
    path: str
    created_at: str


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    project: str
    generation: int
    provider: str
    cpus: int
    memory_mib: int
    created_at: str


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
