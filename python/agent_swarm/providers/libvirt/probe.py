"""Can this host run VMs through libvirt + QEMU? Cheap checks only (no VM is started)."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys

from agent_swarm.providers._probe_util import implementation_check, unix_socket_accepts
from agent_swarm.providers.base import Check, ProbeResult

# libvirt-python has no wheels: the distribution's build needs no compiler (a venv made with
# --system-site-packages sees it); else pip builds it (README, "Install").
LIBVIRT_PYTHON_HINT = (
    "apt install python3-libvirt and install agent-swarm with the system Python into a venv that "
    "sees it (pipx install --python /usr/bin/python3 --system-site-packages agent-swarm); or "
    "build it: apt install libvirt-dev pkg-config gcc python3-dev && "
    "pip install 'agent-swarm[libvirt]'"
)
LIBVIRT_SOCKETS = ("/run/libvirt/libvirt-sock", "/var/run/libvirt/libvirt-sock")
QEMU_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def qemu_binary() -> str | None:
    arch = QEMU_ARCH.get(platform.machine().lower(), platform.machine().lower())
    return shutil.which(f"qemu-system-{arch}")


def probe() -> ProbeResult:
    checks: list[Check] = []
    if not sys.platform.startswith("linux"):
        checks.append(Check("host", False, f"libvirt/QEMU is used on Linux, not {sys.platform}"))
        return ProbeResult("libvirt", "Linux libvirt/QEMU", False, tuple(checks))
    checks.append(implementation_check("agent_swarm.providers.libvirt.provider"))
    has_binding = importlib.util.find_spec("libvirt") is not None
    checks.append(
        Check(
            "libvirt-python",
            has_binding,
            "installed" if has_binding else "the libvirt Python binding is not installed",
            hint=None if has_binding else LIBVIRT_PYTHON_HINT,
        )
    )
    qemu = qemu_binary()
    checks.append(
        Check(
            "qemu",
            qemu is not None,
            qemu or "no qemu-system binary for this architecture on PATH",
            hint=None if qemu else "apt install qemu-system-x86 (or qemu-system-arm on arm64)",
        )
    )
    passt = shutil.which("passt")
    checks.append(
        Check(
            "passt",
            passt is not None,
            f"{passt}: VMs get an isolated network (no access to this host's loopback)"
            if passt
            else "passt is not installed: only VMs created with --host-access can run",
            hint=None if passt else "apt install passt (Fedora: dnf install passt)",
            required=False,
        )
    )
    sock = next((s for s in LIBVIRT_SOCKETS if os.path.exists(s)), None)
    up = sock is not None and unix_socket_accepts(sock)
    checks.append(
        Check(
            "libvirtd",
            up,
            f"listening on {sock}" if up else "libvirtd is not running (no libvirt socket)",
            hint=None
            if up
            else "apt install libvirt-daemon-system, then `systemctl start libvirtd` "
            "(or `libvirtd -d` as root)",
        )
    )
    kvm_ok = os.access("/dev/kvm", os.R_OK | os.W_OK)
    checks.append(
        Check(
            "kvm",
            kvm_ok,
            "/dev/kvm is usable (verified by a bounded guest probe before first use)"
            if kvm_ok
            else "no usable /dev/kvm: VMs run under software emulation (TCG), much slower",
            hint=None if kvm_ok else "enable virtualization in the BIOS / nested virtualization",
            required=False,
        )
    )
    perm = kvm_permission_problem()
    if perm:
        checks.append(
            Check(
                "kvm-permissions",
                False,
                perm,
                hint="chgrp kvm /dev/kvm && chmod 0660 /dev/kvm (what udev does on a normal "
                "Debian boot)",
                required=False,
            )
        )
    available = all(c.ok for c in checks if c.required)
    return ProbeResult("libvirt", "Linux libvirt/QEMU", available, tuple(checks))


def kvm_permission_problem() -> str | None:
    """/dev/kvm that QEMU can open as root but not as libvirt's QEMU user (no udev set its
    group): libvirt then finds its capability cache invalid on every call and re-probes
    QEMU each time, making every define/start take seconds."""
    import grp
    import stat

    try:
        st = os.stat("/dev/kvm")
    except OSError:
        return None
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return None
    if st.st_gid == kvm_gid and st.st_mode & stat.S_IRGRP and st.st_mode & stat.S_IWGRP:
        return None
    if st.st_mode & stat.S_IROTH and st.st_mode & stat.S_IWOTH:
        return None
    return (
        f"/dev/kvm is mode {stat.S_IMODE(st.st_mode):04o}, group {st.st_gid} (not kvm): libvirt "
        "re-probes QEMU on every call, so each define/start takes seconds"
    )
