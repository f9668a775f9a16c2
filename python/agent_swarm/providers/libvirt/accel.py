"""Choose KVM or TCG with a bounded probe.

``/dev/kvm`` existing is not proof that guests run under it (on some hosts a guest hangs in
its boot loader, or QEMU aborts setting MSRs). So before the first VM we boot a real Linux
kernel under KVM with the same CPU model our domains use, and require it to reach a known
console message within a few seconds. Anything else means TCG. The verdict is cached per
(QEMU version, host kernel) in the user cache directory; ``AGENT_SWARM_ACCEL=kvm|tcg`` forces
one.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from agent_swarm.providers.libvirt.probe import qemu_binary

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 20.0
# Printed by any Linux kernel that got as far as trying to mount its root filesystem.
MILESTONES = ("VFS: Unable to mount root fs", "Kernel panic - not syncing")


@dataclass(frozen=True)
class Accel:
    kind: str  # "kvm" | "tcg"
    notice: str | None  # one line for the user when we fall back


def _cache_file() -> Path:
    from agent_swarm.images import debian

    return debian.cache_dir().parent / "accel.json"


def _probe_kernel() -> Path | None:
    from agent_swarm.images import debian

    candidates = sorted(debian.cache_dir().glob("*.vmlinuz"), key=lambda p: p.stat().st_mtime)
    candidates.reverse()
    release = platform.release()
    candidates += [Path(f"/boot/vmlinuz-{release}"), Path("/vmlinuz")]
    for c in candidates:
        if c.is_file() and os.access(c, os.R_OK):
            return c
    return None


def _key(qemu: str) -> str:
    ver = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return f"{ver}|{platform.release()}|{platform.machine()}"


def probe_kvm(qemu: str, kernel: Path, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM (``-cpu host``) with no root fs; True if it reached a milestone."""
    cmd = [
        qemu,
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-machine",
        "q35",
        "-m",
        "256",
        "-smp",
        "1",
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1 root=/dev/nonexistent",
    ]
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        return False, f"cannot start QEMU: {exc}"
    out = b""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        text = out.decode(errors="replace")
        if any(m in text for m in MILESTONES):
            return True, "reached the kernel's root mount"
        return False, f"a test guest did not boot under KVM within {timeout:.0f} s"
    text = out.decode(errors="replace")
    if any(m in text for m in MILESTONES):
        return True, f"test guest booted in {time.monotonic() - t0:.1f} s"
    last = next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), "")
    last = last.removeprefix(f"{qemu}: ").removeprefix(Path(qemu).name + ": ")
    return False, f"QEMU failed: {last[:70]}{'…' if len(last) > 70 else ''}"


def choose(force: str | None = None) -> Accel:
    """KVM if it demonstrably works, else TCG with a notice."""
    force = force or os.environ.get("AGENT_SWARM_ACCEL")
    if force in ("kvm", "tcg"):
        return Accel(force, None)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel("tcg", "notice: /dev/kvm is not usable: using TCG software emulation (slow)")
    qemu = qemu_binary()
    if qemu is None:
        return Accel("tcg", None)  # the provider's host check reports the missing QEMU
    key = _key(qemu)
    cache = _cache_file()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return Accel(cached["kind"], cached.get("notice"))
    except (OSError, ValueError, KeyError):
        pass
    kernel = _probe_kernel()
    if kernel is None:
        ok, why = False, "no kernel to verify KVM with"
    else:
        ok, why = probe_kvm(qemu, kernel)
    log.debug("KVM probe: ok=%s (%s)", ok, why)
    result = Accel(
        "kvm" if ok else "tcg",
        None if ok else f"notice: KVM does not work here ({why}); using TCG emulation (slower)",
    )
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "kind": result.kind, "notice": result.notice}))
        os.replace(tmp, cache)
    except OSError:
        pass
    return result
