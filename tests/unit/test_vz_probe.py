"""The macOS host checks of the VZ provider, fed the output macOS' tools give (codesign,
diskutil, sysctl): the parsing runs here, the tools only on a Mac (ci/macos.sh)."""

from __future__ import annotations

import plistlib
from pathlib import Path

import pytest

from agent_swarm.providers.vz.probe import (
    ENTITLEMENT,
    apfs_check,
    cpu_check,
    macos_check,
    macos_version,
    mount_point,
)

BIN = Path("/opt/agent_swarm/bin/agent-swarm-vz")


def ents_xml(ents: dict[str, object]) -> str:
    return plistlib.dumps(ents).decode()


def test_macos_versions() -> None:
    assert macos_version("14.6.1") == (14, 6)
    assert macos_version("13") == (13, 0)
    assert macos_version("") == (0, 0)
    assert macos_check("12.7").ok is False
    assert "Ventura" in (macos_check("12.7").hint or "")
    c13 = macos_check("13.6")
    assert c13.ok and "macOS 14" in c13.detail  # memory checkpoints need 14
    assert macos_check("15.1").detail == "macOS 15.1"


def test_hypervisor_support() -> None:
    ok = cpu_check("Apple M2 Pro", "arm64", "1\n")
    assert ok.ok and ok.detail == "Apple M2 Pro (arm64)"
    no = cpu_check("Apple M1 (Virtual)", "arm64", "0\n")
    assert not no.ok and "kern.hv_support=0" in no.detail and "nested" in (no.hint or "")


def test_entitlement_granted() -> None:
    from agent_swarm.providers.vz.probe import entitlement_check

    out = "Executable=" + str(BIN) + "\n" + ents_xml({ENTITLEMENT: True})
    assert entitlement_check(BIN, 0, out, "").ok


def test_entitlement_missing_false_or_unsigned() -> None:
    from agent_swarm.providers.vz.probe import entitlement_check

    assert not entitlement_check(BIN, 0, ents_xml({}), "").ok
    assert not entitlement_check(BIN, 0, ents_xml({ENTITLEMENT: False}), "").ok
    assert not entitlement_check(
        BIN, 0, ents_xml({"com.apple.security.get-task-allow": True}), ""
    ).ok
    assert not entitlement_check(BIN, 0, "<plist><dict><key>", "").ok  # malformed
    unsigned = entitlement_check(BIN, 1, "", f"{BIN}: code object is not signed at all\n")
    assert not unsigned.ok and "not signed at all" in unsigned.detail
    assert "codesign -s - -f --entitlements" in (unsigned.hint or "")


def test_apfs_or_a_notice() -> None:
    apfs = plistlib.dumps({"FilesystemType": "apfs", "FilesystemName": "APFS"}).decode()
    assert apfs_check(Path("/Users/me/.agent-swarm"), 0, apfs).ok
    hfs = plistlib.dumps({"FilesystemType": "hfs"}).decode()
    c = apfs_check(Path("/Volumes/Old/.agent-swarm"), 0, hfs)
    assert not c.ok and not c.required and "full copies" in c.detail and "hfs" in c.detail
    assert not apfs_check(Path("/x"), 1, "").ok


def test_mount_point_of_a_missing_path(tmp_path: Path) -> None:
    mp = mount_point(tmp_path / "not" / "there")
    assert mp.is_dir()
    assert (tmp_path.resolve()).is_relative_to(mp)


def test_is_helper_of_reads_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pid read from vz.lock is signalled only when it runs this VM's helper (Linux:
    /proc/PID/cmdline, NUL-separated; macOS: ps's space-joined args)."""
    from agent_swarm.providers.vz import helper as hp

    d = Path("/Users/me/.agent-swarm/vz/task-t1")
    lines = {
        101: "/opt/a b/bin/agent-swarm-vz run --config /Users/me/.agent-swarm/vz/task-t1/vm.json",
        102: "/opt/bin/agent-swarm-vz run --config /Users/me/.agent-swarm/vz/task-t2/vm.json",
        103: "sleep 60",
        104: "/x/agent-swarm-vz\0run\0--config\0/Users/me/.agent-swarm/vz/task-t1/vm.json\0",
        105: "/x/not-agent-swarm-vz\0run\0--config\0/Users/me/.agent-swarm/vz/task-t1/vm.json\0",
    }
    monkeypatch.setattr(hp, "_argv_of", lines.get)
    assert hp.is_helper_of(101, d)
    assert not hp.is_helper_of(102, d)
    assert not hp.is_helper_of(103, d)
    assert hp.is_helper_of(104, d)
    assert not hp.is_helper_of(105, d)
    assert not hp.is_helper_of(106, d)  # gone
    assert not hp.is_helper_of(1, d) and not hp.is_helper_of(2**40, d)


def test_vm_checks_run_two_tools_and_judge_their_output() -> None:
    """check_host's checks: only sysctl and codesign run (no CPU name, no diskutil, no second
    `--version`), and their answers decide."""
    from agent_swarm.providers.vz.probe import vm_checks

    calls: list[list[str]] = []

    def run(cmd: list[str]) -> tuple[int, str, str]:
        calls.append(cmd)
        if cmd[0] == "sysctl":
            return 0, "0\n", ""
        return 0, ents_xml({ENTITLEMENT: True}), ""

    checks = {c.name: c for c in vm_checks(BIN, run)}
    assert [c[0] for c in calls] == ["sysctl", "codesign"]
    assert not checks["hypervisor"].ok and "this Mac" in checks["hypervisor"].detail
    assert checks["signature"].ok
    assert set(checks) == {"macos", "hypervisor", "signature"}
