"""Can this host run VMs through Apple's Virtualization.framework?

Checks, in order (`agent-swarm providers` and `doctor` show them): macOS ≥ 13, the CPU and
whether the kernel offers the hypervisor (``kern.hv_support``: 0 inside most cloud Mac VMs,
which have no nested virtualization), the helper present and runnable, the helper signed with
the ``com.apple.security.virtualization`` entitlement (without it VZ refuses at run time),
and the state directory on APFS (else every task disk is a full copy: a notice, not a
failure). The parsers take the tools' output as arguments so that tests run them anywhere.
"""

from __future__ import annotations

import os
import platform
import plistlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from agent_swarm.providers._probe_util import implementation_check
from agent_swarm.providers.base import Check, ProbeResult

ENTITLEMENT = "com.apple.security.virtualization"
Runner = Callable[[list[str]], tuple[int, str, str]]


def _run(cmd: list[str]) -> tuple[int, str, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def macos_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of this macOS (``platform.mac_ver``), (0, 0) when unknown."""
    release = platform.mac_ver()[0] if release is None else release
    m = re.match(r"(\d+)(?:\.(\d+))?", release or "")
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (0, 0)


def macos_check(release: str) -> Check:
    major, minor = macos_version(release)
    if major < 13:
        return Check(
            "macos",
            False,
            f"macOS {release or 'unknown'}",
            hint="macOS 13 (Ventura) or newer is needed",
        )
    extra = "" if major >= 14 else " (checkpoints of running VMs need macOS 14)"
    return Check("macos", True, f"macOS {major}.{minor}{extra}")


def cpu_check(brand: str, machine: str, hv_support: str) -> Check:
    cpu = f"{brand.strip() or 'unknown CPU'} ({machine})"
    if hv_support.strip() != "1":
        return Check(
            "hypervisor",
            False,
            f"{cpu}: the kernel offers no hypervisor (kern.hv_support={hv_support.strip() or '?'})",
            hint="run on a real Mac: most cloud Mac VMs have no nested virtualization",
        )
    return Check("hypervisor", True, cpu)


def entitlement_check(binary: Path, rc: int, stdout: str, stderr: str) -> Check:
    """From ``codesign -d --entitlements - --xml BINARY``: is the VZ entitlement granted?"""
    if rc != 0:
        why = (stderr.strip().splitlines() or [f"exit status {rc}"])[-1]
        return Check(
            "signature",
            False,
            f"{binary.name} is not signed: {why[:200]}",
            hint=f"codesign -s - -f --entitlements agent-swarm-vz.entitlements {binary}",
        )
    granted = False
    start = stdout.find("<?xml")
    if start < 0:
        start = stdout.find("<plist")
    if start >= 0:
        try:
            ents = plistlib.loads(stdout[start:].encode())
            granted = isinstance(ents, dict) and ents.get(ENTITLEMENT) is True
        except Exception:  # a malformed plist is "not granted"
            granted = False
    if not granted:
        return Check(
            "signature",
            False,
            f"{binary.name} lacks the {ENTITLEMENT} entitlement",
            hint=f"codesign -s - -f --entitlements agent-swarm-vz.entitlements {binary}",
        )
    return Check("signature", True, f"signed with {ENTITLEMENT}")


def apfs_check(path: Path, rc: int, stdout: str) -> Check:
    """From ``diskutil info -plist PATH``: is the state directory on APFS (clonefile)?"""
    fs = ""
    if rc == 0:
        try:
            info = plistlib.loads(stdout.encode())
            fs = str(info.get("FilesystemType") or info.get("FilesystemName") or "")
        except Exception:  # unknown output: say so
            fs = ""
    if fs.lower() == "apfs":
        return Check("disk", True, f"{path} is on APFS: task disks are clones", required=False)
    return Check(
        "disk",
        False,
        f"{path} is on {fs or 'an unknown filesystem'}: task disks will be full copies",
        hint="put AGENT_SWARM_HOME on an APFS volume",
        required=False,
    )


def mount_point(path: Path) -> Path:
    """The mount point of the volume ``path`` (or its nearest existing parent) is on:
    ``diskutil info`` wants a mount point or a device, not any path."""
    p = path.resolve()
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


def vm_checks(binary: Path, run: Runner = _run) -> list[Check]:
    """What a VM start needs from this Mac, for the provider's check_host (run once per
    command: two subprocesses): macOS version, hypervisor, the helper's entitlement. The
    helper's own `--version` the provider runs itself."""
    hv = run(["sysctl", "-n", "kern.hv_support"])[1]
    signed = entitlement_check(
        binary, *run(["codesign", "-d", "--entitlements", "-", "--xml", str(binary)])
    )
    return [
        macos_check(platform.mac_ver()[0]),
        cpu_check("this Mac", platform.machine(), hv),
        signed,
    ]


def probe(run: Runner = _run) -> ProbeResult:
    checks: list[Check] = []
    desc = "macOS Virtualization.framework"
    if sys.platform != "darwin":
        checks.append(
            Check("host", False, f"Virtualization.framework is macOS-only, not {sys.platform}")
        )
        return ProbeResult("vz", desc, False, tuple(checks))
    checks.append(macos_check(platform.mac_ver()[0]))
    brand = run(["sysctl", "-n", "machdep.cpu.brand_string"])[1]
    hv = run(["sysctl", "-n", "kern.hv_support"])[1]
    checks.append(cpu_check(brand, platform.machine(), hv))

    from agent_swarm import paths
    from agent_swarm.providers.vz.helper import helper_path

    binary = helper_path()
    if binary.is_file():
        rc, out, err = run([str(binary), "--version"])
        ok = rc == 0 and "(backend vz)" in out
        checks.append(
            Check(
                "helper",
                ok,
                out.strip() or err.strip()[:200] or str(binary),
                hint=None if ok else "reinstall agent-swarm (the macOS wheel ships the helper)",
            )
        )
        checks.append(
            entitlement_check(
                binary, *run(["codesign", "-d", "--entitlements", "-", "--xml", str(binary)])
            )
        )
    else:
        checks.append(
            Check(
                "helper",
                False,
                f"{binary} is missing",
                hint="reinstall agent-swarm (the macOS wheel ships the helper)",
            )
        )
    home = paths.home()
    rc, out, _ = run(["diskutil", "info", "-plist", str(mount_point(home))])
    checks.append(apfs_check(home, rc, out))
    checks.append(implementation_check("agent_swarm.providers.vz.provider"))
    available = all(c.ok for c in checks if c.required)
    return ProbeResult("vz", desc, available, tuple(checks))
