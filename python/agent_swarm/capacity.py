"""Host capacity: what the host has, what running VMs already take, and whether more fit.

Allocation is compared with the host scaled by configurable oversubscription ratios:

* vCPUs of running VMs ≤ ``cpu_ratio`` × host CPUs (default 4: idle agents rarely use all),
* RAM of running VMs ≤ ``memory_ratio`` × (host RAM − 1 GiB kept for the host) (default 1:
  guest RAM that is not there ends in the OOM killer),
* free disk ≥ ``disk_reserve_gib`` + 512 MiB per new VM (overlays grow as guests write).

Ratios come from ``[capacity]`` in ``$AGENT_SWARM_HOME/config.toml`` and can be overridden by
``AGENT_SWARM_CPU_RATIO`` / ``AGENT_SWARM_MEMORY_RATIO`` / ``AGENT_SWARM_DISK_RESERVE_GIB``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent_swarm import paths
from agent_swarm.errors import CapacityError, ConfigError

HOST_RESERVE = 1 << 30
PER_VM_DISK = 512 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Host:
    cpus: int
    memory_bytes: int
    memory_available_bytes: int
    disk_total_bytes: int
    disk_free_bytes: int


@dataclass(frozen=True)
class Limits:
    cpu_ratio: float = 4.0
    memory_ratio: float = 1.0
    disk_reserve_gib: float = 2.0


@dataclass(frozen=True)
class Demand:
    vcpus: int = 0
    memory_mib: int = 0
    vms: int = 0

    def __add__(self, other: Demand) -> Demand:
        return Demand(
            self.vcpus + other.vcpus, self.memory_mib + other.memory_mib, self.vms + other.vms
        )


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def host(path: Path | None = None) -> Host:
    """This host's CPUs, RAM and the disk holding the state directory."""
    cpus = os.cpu_count() or 1
    mi = _meminfo()
    total = mi.get("MemTotal", 0)
    avail = mi.get("MemAvailable", 0)
    if not total and hasattr(os, "sysconf"):
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            total = 0
        avail = avail or total
    du = shutil.disk_usage(path or paths.ensure_home())
    return Host(cpus, total, avail, du.total, du.free)


def _ratio(env: str, value: object, what: str) -> float:
    raw = os.environ.get(env, value)
    try:
        r = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(
            f"{what} must be a number, got {raw!r}",
            hint=f"fix {env} or [capacity] in {paths.home() / 'config.toml'}",
        ) from None
    if not r > 0 or r > 1000:
        raise ConfigError(
            f"{what} must be > 0 (and sane), got {r}",
            hint=f"fix {env} or [capacity] in {paths.home() / 'config.toml'}",
        )
    return r


def limits() -> Limits:
    from agent_swarm import settings

    cfg: dict[str, object] = dict(settings.capacity_section())
    d = Limits()
    return Limits(
        _ratio("AGENT_SWARM_CPU_RATIO", cfg.get("cpu_ratio", d.cpu_ratio), "cpu_ratio"),
        _ratio("AGENT_SWARM_MEMORY_RATIO", cfg.get("memory_ratio", d.memory_ratio), "memory_ratio"),
        _ratio(
            "AGENT_SWARM_DISK_RESERVE_GIB",
            cfg.get("disk_reserve_gib", d.disk_reserve_gib),
            "disk_reserve_gib",
        ),
    )


def memory_budget(h: Host, lim: Limits) -> int:
    return int(max(h.memory_bytes - HOST_RESERVE, 0) * lim.memory_ratio)


def check(h: Host, running: Demand, new: Demand, lim: Limits, *, what: str) -> None:
    """Raise :class:`CapacityError` when ``new`` on top of ``running`` does not fit."""
    problems = []
    cpu_cap = h.cpus * lim.cpu_ratio
    if running.vcpus + new.vcpus > cpu_cap:
        problems.append(
            f"{running.vcpus + new.vcpus} vCPUs > {cpu_cap:g} "
            f"({h.cpus} CPUs x cpu_ratio {lim.cpu_ratio:g})"
        )
    mem_cap = memory_budget(h, lim)
    want = (running.memory_mib + new.memory_mib) << 20
    if want > mem_cap:
        problems.append(
            f"{want / GIB:.1f} GiB RAM > {mem_cap / GIB:.1f} GiB "
            f"(host {h.memory_bytes / GIB:.1f} GiB - 1 GiB, x memory_ratio {lim.memory_ratio:g})"
        )
    disk_need = int(lim.disk_reserve_gib * GIB) + new.vms * PER_VM_DISK
    if new.vms and h.disk_free_bytes < disk_need:
        problems.append(
            f"{h.disk_free_bytes / GIB:.1f} GiB free disk < {disk_need / GIB:.1f} GiB "
            f"({lim.disk_reserve_gib:g} GiB reserve + 0.5 GiB per new VM)"
        )
    if problems:
        running_part = (
            f" on top of {running.vms} running VM{'s' if running.vms != 1 else ''} "
            f"({running.vcpus} vCPUs, {running.memory_mib / 1024:.1f} GiB)"
            if running.vms
            else ""
        )
        raise CapacityError(
            f"{what} would oversubscribe this host{running_part}: " + "; ".join(problems),
            hint="stop or delete VMs, give smaller --cpus/--memory, raise the ratio "
            f"([capacity] in {paths.home() / 'config.toml'}), or pass --force",
        )


def default_parallel(h: Host, n: int, per_vm: Demand, *, booting: bool) -> int:
    """Concurrency for bulk operations: cloning is cheap; booting is bounded by CPUs and by
    the RAM that is actually available."""
    if n <= 1:
        return 1
    if not booting:
        return min(n, 8)
    by_cpu = max(1, 2 * h.cpus)
    by_mem = max(1, h.memory_available_bytes // max(per_vm.memory_mib << 20, 1))
    return max(1, min(n, by_cpu, by_mem, 16))
