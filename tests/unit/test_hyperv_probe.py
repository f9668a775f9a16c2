"""The Windows host checks of the Hyper-V provider, fed answers of scripts/host-check.ps1 as
Windows gives them: the checks run here, the script only on Windows (ci/windows.ps1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent_swarm.errors import ConfigError, ProviderUnavailable
from agent_swarm.providers.hyperv import probe as hp

HOME = Path("C:/Users/me/.agent-swarm")

WIN11_PRO: dict[str, Any] = {
    "product": "Windows 10 Pro",  # sic: Windows 11 keeps this ProductName
    "edition": "Professional",
    "build": "22631",
    "ubr": "3880",
    "display_version": "23H2",
    "installation_type": "Client",
}


def facts(**over: Any) -> dict[str, Any]:
    """A healthy Windows 11 Pro host, as host-check.ps1 answers for it."""
    base: dict[str, Any] = {
        "windows": dict(WIN11_PRO),
        "rights": {"user": "PC\\me", "elevated": False, "hyperv_admin": True},
        "hypervisor_present": True,
        "virtualization_firmware": False,  # reads False while the hypervisor runs
        "vmms": {"status": "Running"},
        "module": {"version": "2.0.0.0"},
        "feature": None,
        "switch": {"found": True, "type": "Internal"},
        "filesystem": {"root": "C:\\", "format": "NTFS"},
        "powershell": "5.1.22621.2506",
        "errors": [],
    }
    base.update(over)
    return base


def failing(checks: list[Any]) -> list[str]:
    return [c.name for c in checks if c.required and not c.ok]


def test_a_healthy_host() -> None:
    checks = hp.host_checks(facts(), HOME, "Default Switch")
    assert failing(checks) == []
    by = {c.name: c for c in checks}
    assert by["windows"].detail == "Windows 11 Pro 23H2 (build 22631.3880)"
    assert by["hyper-v"].detail == "enabled (Hyper-V module 2.0.0.0)"
    assert by["rights"].detail == "PC\\me is in Hyper-V Administrators"
    assert by["switch"].detail == "'Default Switch' (Internal): NAT with DHCP"
    assert "NTFS" in by["disk"].detail and by["disk"].required is False


@pytest.mark.parametrize(
    ("win", "ok", "detail", "hint"),
    [
        ({**WIN11_PRO, "edition": "Core"}, False, "Home edition has no Hyper-V", "Pro, Enterprise"),
        ({**WIN11_PRO, "edition": "CoreSingleLanguage"}, False, "Home edition", "Education"),
        ({**WIN11_PRO, "build": "17134", "display_version": "", "ubr": "1"}, False,
         "older than Windows 10 1809", "update Windows"),
        ({**WIN11_PRO, "product": "Windows 10 Enterprise", "edition": "Enterprise",
          "build": "19045", "display_version": "22H2"}, True,
         "Windows 10 Enterprise 22H2 (build 19045.3880)", None),
        ({"product": "Windows Server 2022 Datacenter", "edition": "ServerDatacenter",
          "build": "20348", "ubr": "2582", "display_version": "21H2",
          "installation_type": "Server"}, True, "Windows Server 2022 Datacenter 21H2", None),
        (None, False, "could not be read", None),
    ],
    ids=["home", "home-single-language", "1803", "win10-enterprise", "server-2022", "unreadable"],
)  # fmt: skip
def test_windows_editions_and_builds(
    win: dict[str, Any] | None, ok: bool, detail: str, hint: str | None
) -> None:
    c = hp.windows_check(win)
    assert c.ok is ok and detail in c.detail, c
    if hint:
        assert hint in (c.hint or "")


@pytest.mark.parametrize(
    ("over", "detail", "hint"),
    [
        ({"vmms": None, "feature": "Disabled"}, "not enabled (feature Microsoft-Hyper-V-All: "
         "Disabled)", "Enable-WindowsOptionalFeature -Online -FeatureName Microsoft-Hyper-V -All"),
        ({"vmms": None, "hypervisor_present": False, "virtualization_firmware": False},
         "not enabled", "turn on virtualization (Intel VT-x / AMD-V)"),
        ({"vmms": {"status": "Stopped"}}, "(vmms) is Stopped", "Start-Service vmms"),
        ({"hypervisor_present": False}, "hypervisor is not running",
         "bcdedit /set hypervisorlaunchtype auto"),
        ({"module": None}, "PowerShell module is not installed",
         "Microsoft-Hyper-V-Management-PowerShell"),
    ],
    ids=["disabled", "no-vt-x", "service-stopped", "no-hypervisor", "no-module"],
)  # fmt: skip
def test_hyperv_not_usable(over: dict[str, Any], detail: str, hint: str) -> None:
    c = hp.hyperv_check(facts(**over))
    assert not c.ok and detail in c.detail, c
    assert hint in (c.hint or "")


def test_rights() -> None:
    assert hp.rights_check({"user": "PC\\a", "elevated": True, "hyperv_admin": False}).ok
    c = hp.rights_check({"user": "PC\\me", "elevated": False, "hyperv_admin": False})
    assert not c.ok and "PC\\me is not in Hyper-V Administrators" in c.detail
    assert "Add-LocalGroupMember -SID S-1-5-32-578" in (c.hint or "")
    assert not hp.rights_check(None).ok


def test_switch() -> None:
    c = hp.switch_check({"found": False, "type": ""}, "Default Switch")
    assert not c.ok and "no virtual switch named 'Default Switch'" in c.detail
    assert hp.SWITCH_ENV in (c.hint or "")
    c = hp.switch_check(None, "Default Switch")
    assert not c.ok and "not checked" in c.detail


@pytest.mark.parametrize(
    ("fmt", "ok", "required", "detail"),
    [
        ("NTFS", True, False, "is on NTFS"),
        ("ReFS", True, False, "is on ReFS (block cloning"),
        ("FAT32", False, True, "NTFS or ReFS only"),
        ("exFAT", False, True, "is on exFAT"),
        (None, True, False, "filesystem unknown"),
    ],
)
def test_state_directory_filesystem(fmt: str | None, ok: bool, required: bool, detail: str) -> None:
    c = hp.filesystem_check(HOME, {"root": "C:\\", "format": fmt} if fmt else None)
    assert (c.ok, c.required) == (ok, required) and detail in c.detail, c


def test_switch_name_from_the_environment() -> None:
    assert hp.switch_name({}) == "Default Switch"
    assert hp.switch_name({hp.SWITCH_ENV: "NAT Switch (agent-swarm)"}) == "NAT Switch (agent-swarm)"
    for bad in ("-Command x", "a'b", "x\ny", "[wild]*", "a" * 101):
        with pytest.raises(ConfigError):
            hp.switch_name({hp.SWITCH_ENV: bad})


def test_probe_with_a_host_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENT_SWARM_HOME", str(tmp_path))
    monkeypatch.delenv(hp.SWITCH_ENV, raising=False)
    seen: list[tuple[Path, str]] = []

    def host_check(home: Path, switch: str) -> dict[str, Any]:
        seen.append((home, switch))
        return facts()

    r = hp.probe(host_check)
    assert r.available and r.reason is None
    assert seen == [(tmp_path.resolve(), "Default Switch")]
    names = [c.name for c in r.checks]
    assert names == [
        "powershell", "windows", "hyper-v", "rights", "switch", "disk", "qemu-img",
        "implementation",
    ]  # fmt: skip
    assert r.checks[0].detail == "PowerShell 5.1.22621.2506"

    r = hp.probe(lambda h, s: facts(rights={"user": "PC\\me", "elevated": False}))
    assert not r.available and r.reason and r.reason.startswith("rights: ")

    def broken(home: Path, switch: str) -> dict[str, Any]:
        raise ProviderUnavailable("PowerShell was not found", hint="install PowerShell 7")

    r = hp.probe(broken)
    assert not r.available and r.reason == "powershell: PowerShell was not found"


def test_probe_off_windows() -> None:
    import sys

    if sys.platform == "win32":
        pytest.skip("checks the refusal off Windows")
    r = hp.probe()
    assert not r.available and "Windows-only" in (r.reason or "")
