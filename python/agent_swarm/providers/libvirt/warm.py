"""Warm templates and clones for the libvirt provider (docs/warm-clones.md).

The template's guest RAM is a file mapped shared (``memory-backend-file,share=on`` through
``<qemu:commandline>``); its device state is saved over QMP with the ``x-ignore-shared``
migration capability, so the RAM stays in the file and the state is about 1 MB. A clone maps
the same file privately (``share=off``: copy-on-write, clean pages shared through the page
cache), starts paused in QEMU's incoming state (``-incoming defer``), loads the state and
resumes. libvirt stays the owner of both: ``migrate``/``migrate-incoming`` use ``fd:`` with a
descriptor passed by ``getfd`` (``exec:`` would fork a process, which libvirt's seccomp
sandbox kills with QEMU), and libvirt accepts a domain started paused in the incoming state.

The guest agent (qemu-guest-agent, in our base image) gives the clone its identity before
anything can log in: ``guest-exec`` with the data on stdin (``input-data``), never in argv.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

from agent_swarm.errors import ProviderError, Timeout

MIGRATE_TIMEOUT = 300.0
FIRMWARE = ("/usr/share/seabios/bios-256k.bin", "/usr/share/qemu/bios-256k.bin")


def qmp(dom: libvirt.virDomain, command: str, **arguments: Any) -> Any:
    """One QMP command through libvirt; its ``return`` value."""
    msg: dict[str, Any] = {"execute": command}
    if arguments:
        msg["arguments"] = arguments
    try:
        out = libvirt_qemu.qemuMonitorCommand(dom, json.dumps(msg), 0)
    except libvirt.libvirtError as exc:
        raise ProviderError(f"QEMU {command}: {exc.get_error_message()}") from exc
    reply = json.loads(out)
    if "error" in reply:
        raise ProviderError(f"QEMU {command}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return")


def _pass_fd(dom: libvirt.virDomain, fd: int, name: str) -> None:
    msg = json.dumps({"execute": "getfd", "arguments": {"fdname": name}})
    try:
        out, _ = libvirt_qemu.qemuMonitorCommandWithFiles(dom, msg, [fd], 0)
    except libvirt.libvirtError as exc:
        raise ProviderError(f"QEMU getfd: {exc.get_error_message()}") from exc
    reply = json.loads(out)
    if "error" in reply:
        raise ProviderError(f"QEMU getfd: {reply['error'].get('desc', reply['error'])}")


def _ignore_shared(dom: libvirt.virDomain, on: bool) -> None:
    # Both sides must agree; a clone that differs refuses the state loudly.
    qmp(
        dom,
        "migrate-set-capabilities",
        capabilities=[{"capability": "x-ignore-shared", "state": on}],
    )


def _wait_migration(dom: libvirt.virDomain, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        info = qmp(dom, "query-migrate") or {}
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise ProviderError(f"{what} failed: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            raise Timeout(f"{what} did not finish within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def save(
    dom: libvirt.virDomain,
    state: Path,
    *,
    ignore_shared: bool = True,
    after: Callable[[], None] | None = None,
) -> None:
    """Pause the domain and write its state to ``state`` (0600, fsynced): device state only
    with ``ignore_shared`` (its RAM is a shared file), else RAM too. ``after`` runs while it
    is still paused (disks flushed). It stays paused."""
    _ignore_shared(dom, ignore_shared)
    # QEMU limits migration to 128 MiB/s by default: a file is no network link.
    qmp(dom, "migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    qmp(dom, "stop")
    fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _pass_fd(dom, fd, "as-mig")
    finally:
        os.close(fd)  # QEMU holds its own copy
    qmp(dom, "migrate", uri="fd:as-mig")
    _wait_migration(dom, "saving the running state", MIGRATE_TIMEOUT)
    if after is not None:
        after()
    with open(state, "rb") as f:
        os.fsync(f.fileno())


def load(dom: libvirt.virDomain, state: Path, *, ignore_shared: bool = True) -> None:
    """Load ``state`` into a domain started paused with ``-incoming defer``."""
    _ignore_shared(dom, ignore_shared)
    fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _pass_fd(dom, fd, "as-mig")
    finally:
        os.close(fd)
    qmp(dom, "migrate-incoming", uri="fd:as-mig")
    _wait_migration(dom, "loading the saved state", MIGRATE_TIMEOUT)


class QemuGuestAgent:
    """qemu-guest-agent through libvirt (a :class:`~agent_swarm.providers.base.GuestAgent`)."""

    def __init__(self, dom: libvirt.virDomain) -> None:
        self.dom = dom

    def _cmd(self, command: str, timeout: float, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        try:
            out = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(msg), max(1, int(timeout)), 0)
        except libvirt.libvirtError as exc:
            raise ProviderError(f"guest agent {command}: {exc.get_error_message()}") from exc
        return json.loads(out).get("return")

    def ping(self, timeout: float) -> bool:
        try:
            self._cmd("guest-ping", timeout)
        except ProviderError:
            return False
        return True

    def exec(
        self,
        argv: list[str],
        stdin: bytes,
        timeout: float,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[int, bytes, bytes]:
        started = self._cmd(
            "guest-exec",
            30,
            path=argv[0],
            arg=argv[1:],
            **{"input-data": base64.b64encode(stdin).decode(), "capture-output": True},
        )
        pid = int(started["pid"])
        if meanwhile is not None:
            meanwhile()
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            st = self._cmd("guest-exec-status", 30, pid=pid) or {}
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "") or "")
                err = base64.b64decode(st.get("err-data", "") or "")
                return int(st.get("exitcode", -1)), out, err
            if time.monotonic() > deadline:
                raise Timeout(f"a command in the guest did not finish within {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def set_time(self) -> None:
        ns = time.time_ns()
        try:
            self.dom.setTime({"seconds": ns // 1_000_000_000, "nseconds": ns % 1_000_000_000})
        except libvirt.libvirtError as exc:
            raise ProviderError(f"setting the guest's clock: {exc.get_error_message()}") from exc


def _file_id(path: str) -> str:
    """A cheap identity of an installed file (size and mtime: a package upgrade changes it)."""
    try:
        st = os.stat(path)
    except OSError:
        return "absent"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _machines(conn: libvirt.virConnect, arch: str) -> tuple[str, dict[str, str]]:
    """(emulator, {machine name or alias: canonical name}) for ``arch`` from the host's
    capabilities."""
    import xml.etree.ElementTree as ET

    caps = ET.fromstring(conn.getCapabilities())
    for guest in caps.findall("guest"):
        a = guest.find("arch")
        if a is None or a.get("name") != arch:
            continue
        names: dict[str, str] = {}
        for m in a.findall("machine"):
            text = (m.text or "").strip()
            names[text] = m.get("canonical") or text
        return a.findtext("emulator") or "", names
    return "", {}


def fingerprint(
    conn: libvirt.virConnect, arch: str, machine: str, cpu_xml: str, device_layout: str
) -> dict[str, str]:
    """What a saved state depends on: QEMU and libvirt versions, the emulator binary and the
    firmware (by size and mtime), the exact machine type (an alias such as ``q35`` resolved to
    what this QEMU calls it, e.g. ``pc-q35-7.2``), the CPU model and the device layout our XML
    generator produces. Needs no defined domain."""
    emulator, machines = _machines(conn, arch)
    firmware = next((f for f in FIRMWARE if os.path.exists(f)), FIRMWARE[0])
    return {
        "qemu": str(conn.getVersion()),
        "libvirt": str(conn.getLibVersion()),
        "emulator": f"{emulator} {_file_id(emulator)}",
        "firmware": f"{firmware} {_file_id(firmware)}",
        "machine": machines.get(machine, f"unsupported:{machine}"),
        "cpu": hashlib.sha256(cpu_xml.encode()).hexdigest()[:16],
        "devices": device_layout,
    }
