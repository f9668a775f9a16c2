"""Can this host run VMs through Hyper-V?

Checks, in order (`agent-swarm providers` and `doctor` show them): PowerShell runs; the Windows
edition and build (Home has no Hyper-V; Windows 10 1809 / Server 2019 or newer); Hyper-V
enabled (its management service running, the hypervisor running, the PowerShell module
present); the user in "Hyper-V Administrators" or the session elevated; the virtual switch
(the "Default Switch", or ``$AGENT_SWARM_HYPERV_SWITCH``) present; the state directory on NTFS
or ReFS; ``qemu-img`` for converting base images (not required).

All facts come from one run of ``scripts/host-check.ps1``; the checks are made here, by pure
functions of its answer, so tests feed them sample answers on any system.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent_swarm.errors import AgentSwarmError, ConfigError, ProviderError
from agent_swarm.providers._probe_util import implementation_check
from agent_swarm.providers.base import Check, ProbeResult

DESCRIPTION = "Windows Hyper-V"
SWITCH_ENV = "AGENT_SWARM_HYPERV_SWITCH"
DEFAULT_SWITCH = "Default Switch"
SWITCH_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ()._-]{0,99}")
MIN_BUILD = 17763  # Windows 10 1809 / Windows Server 2019 (the cmdlet reference we check)
WINDOWS_11_BUILD = 22000
HOST_CHECK_TIMEOUT = 60.0

HostCheck = Callable[[Path, str], Mapping[str, Any]]

ADD_TO_GROUP = (
    "in an elevated PowerShell: Add-LocalGroupMember -SID S-1-5-32-578 -Member $env:USERNAME "
    "(the Hyper-V Administrators group), then sign out and in again; or run agent-swarm "
    "from an elevated prompt"
)
ENABLE_HYPERV = (
    "in an elevated PowerShell: Enable-WindowsOptionalFeature -Online -FeatureName "
    "Microsoft-Hyper-V -All, then restart Windows"
)
ENABLE_MODULE = (
    "in an elevated PowerShell: Enable-WindowsOptionalFeature -Online -FeatureName "
    "Microsoft-Hyper-V-Management-PowerShell"
)
NO_SWITCH = (
    'Windows 10 1709 and later make the "Default Switch" when Hyper-V is on (restart once '
    f"after enabling it); on Windows Server make a NAT switch with DHCP and set {SWITCH_ENV}"
)


def switch_name(environ: Mapping[str, str] | None = None) -> str:
    """The virtual switch VMs are connected to: ``$AGENT_SWARM_HYPERV_SWITCH`` or the
    "Default Switch" (Hyper-V's NAT with DHCP on Windows 10/11)."""
    env = os.environ if environ is None else environ
    name = env.get(SWITCH_ENV) or DEFAULT_SWITCH
    if SWITCH_RE.fullmatch(name) is None:
        raise ConfigError(
            f"{SWITCH_ENV}={name[:80]!r} is not a switch name agent-swarm accepts",
            hint="letters, digits, spaces and ()._- only, e.g. 'Default Switch'",
        )
    return name


def _text(facts: Mapping[str, Any] | None, key: str) -> str:
    value = facts.get(key) if facts else None
    return str(value).strip() if value is not None else ""


def _build(win: Mapping[str, Any] | None) -> int:
    try:
        return int(_text(win, "build"))
    except ValueError:
        return 0


def windows_label(win: Mapping[str, Any] | None) -> str:
    """ "Windows 11 Pro 23H2 (build 22631.3880)". The registry's ProductName still says
    "Windows 10" on Windows 11: the build tells them apart."""
    product = _text(win, "product") or "Windows"
    build = _build(win)
    if build >= WINDOWS_11_BUILD and product.startswith("Windows 10"):
        product = "Windows 11" + product[len("Windows 10") :]
    version = _text(win, "display_version")
    ubr = _text(win, "ubr")
    b = f"{build}.{ubr}" if build and ubr else str(build or "?")
    return f"{product}{' ' + version if version else ''} (build {b})"


def windows_check(win: Mapping[str, Any] | None) -> Check:
    if not win:
        return Check("windows", False, "the Windows version could not be read")
    label = windows_label(win)
    edition = _text(win, "edition")
    if edition.lower().startswith("core"):  # Core, CoreN, CoreSingleLanguage: Home
        return Check(
            "windows",
            False,
            f"{label}: the Home edition has no Hyper-V",
            hint="Hyper-V needs Windows 10/11 Pro, Enterprise or Education, or Windows Server",
        )
    if _build(win) < MIN_BUILD:
        return Check(
            "windows",
            False,
            f"{label}: older than Windows 10 1809 (build {MIN_BUILD})",
            hint="update Windows",
        )
    return Check("windows", True, label)


def hyperv_check(facts: Mapping[str, Any]) -> Check:
    """Hyper-V enabled: the management service runs, the hypervisor runs, the module is
    there."""
    vmms = facts.get("vmms")
    feature = _text(facts, "feature")
    if not isinstance(vmms, Mapping):
        hint = ENABLE_HYPERV
        if facts.get("virtualization_firmware") is False:
            hint = (
                "turn on virtualization (Intel VT-x / AMD-V) in the firmware settings; then " + hint
            )
        state = f" (feature Microsoft-Hyper-V-All: {feature})" if feature else ""
        return Check("hyper-v", False, f"Hyper-V is not enabled{state}", hint=hint)
    status = _text(vmms, "status")
    if status != "Running":
        return Check(
            "hyper-v",
            False,
            f"the Hyper-V Virtual Machine Management service (vmms) is {status or 'not running'}",
            hint="in an elevated PowerShell: Start-Service vmms (or restart Windows)",
        )
    if facts.get("hypervisor_present") is False:
        return Check(
            "hyper-v",
            False,
            "Hyper-V is installed but the hypervisor is not running",
            hint="turn on virtualization in the firmware settings; in an elevated prompt: "
            "bcdedit /set hypervisorlaunchtype auto, then restart Windows",
        )
    module = facts.get("module")
    if not isinstance(module, Mapping):
        return Check(
            "hyper-v", False, "the Hyper-V PowerShell module is not installed", hint=ENABLE_MODULE
        )
    return Check("hyper-v", True, f"enabled (Hyper-V module {_text(module, 'version') or '?'})")


def rights_check(rights: Mapping[str, Any] | None) -> Check:
    if not isinstance(rights, Mapping):
        return Check("rights", False, "who runs agent-swarm could not be read", hint=ADD_TO_GROUP)
    user = _text(rights, "user") or "this user"
    if rights.get("hyperv_admin") is True:
        return Check("rights", True, f"{user} is in Hyper-V Administrators")
    if rights.get("elevated") is True:
        return Check("rights", True, f"{user}, elevated (administrator)")
    return Check(
        "rights",
        False,
        f"{user} is not in Hyper-V Administrators and the session is not elevated",
        hint=ADD_TO_GROUP,
    )


def switch_check(switch: Mapping[str, Any] | None, name: str) -> Check:
    if not isinstance(switch, Mapping):
        return Check(
            "switch",
            False,
            f"'{name}' not checked: Hyper-V cannot be asked yet (see above)",
        )
    if switch.get("found") is not True:
        return Check(
            "switch", False, f"Hyper-V has no virtual switch named '{name}'", hint=NO_SWITCH
        )
    kind = _text(switch, "type")
    return Check("switch", True, f"'{name}'{f' ({kind})' if kind else ''}: NAT with DHCP")


def filesystem_check(home: Path, fs: Mapping[str, Any] | None) -> Check:
    """NTFS or ReFS (Hyper-V keeps VM disks on nothing else); ReFS also clones full copies."""
    fmt = _text(fs, "format")
    if not fmt:
        return Check("disk", True, f"{home}: filesystem unknown", required=False)
    if fmt.upper() == "REFS":
        return Check(
            "disk", True, f"{home} is on ReFS (block cloning for full copies)", required=False
        )
    if fmt.upper() == "NTFS":
        return Check(
            "disk",
            True,
            f"{home} is on NTFS (VM disks are differencing VHDX: no copies; ReFS would also "
            "clone the rare full copy)",
            required=False,
        )
    return Check(
        "disk",
        False,
        f"{home} is on {fmt}: Hyper-V keeps VM disks on NTFS or ReFS only",
        hint="set AGENT_SWARM_HOME to a directory on an NTFS or ReFS volume",
    )


def qemu_img_check(found: str | None) -> Check:
    if found:
        return Check("qemu-img", True, found, required=False)
    return Check(
        "qemu-img",
        False,
        "not found: base images cannot be converted to VHDX",
        hint="install QEMU for Windows and put qemu-img.exe on PATH",
        required=False,
    )


def host_checks(facts: Mapping[str, Any], home: Path, switch: str) -> list[Check]:
    """Every check made from one host-check.ps1 answer, in the order they are shown."""
    return [
        windows_check(facts.get("windows")),
        hyperv_check(facts),
        rights_check(facts.get("rights")),
        switch_check(facts.get("switch"), switch),
        filesystem_check(home, facts.get("filesystem")),
    ]


_HOST_FACTS: dict[tuple[Path, str], Mapping[str, Any]] = {}


def run_host_check(home: Path, switch: str) -> Mapping[str, Any]:
    """host-check.ps1's answer: one PowerShell run per process (the probe that chooses the
    provider and the provider's own check_host share it)."""
    from agent_swarm.providers.hyperv.runner import PowerShell

    key = (home, switch)
    if key not in _HOST_FACTS:
        result = PowerShell().run(
            "host-check.ps1",
            {"StatePath": home, "SwitchName": switch},
            timeout=HOST_CHECK_TIMEOUT,
            what="read this host's Hyper-V setup",
        )
        if not isinstance(result, Mapping):
            raise ProviderError("host-check.ps1 answered with no facts")
        _HOST_FACTS[key] = result
    return _HOST_FACTS[key]


def probe(host_check: HostCheck | None = None) -> ProbeResult:
    checks: list[Check] = []
    if host_check is None and sys.platform != "win32":
        checks.append(Check("host", False, f"Hyper-V is Windows-only, not {sys.platform}"))
        return ProbeResult("hyperv", DESCRIPTION, False, tuple(checks))
    from agent_swarm import paths

    home = paths.home()
    try:
        switch = switch_name()
        facts = (host_check or run_host_check)(home, switch)
    except AgentSwarmError as exc:
        checks.append(Check("powershell", False, exc.message, hint=exc.hint))
        return ProbeResult("hyperv", DESCRIPTION, False, tuple(checks))
    checks.append(Check("powershell", True, f"PowerShell {_text(facts, 'powershell') or '?'}"))
    checks += host_checks(facts, home, switch)
    checks.append(qemu_img_check(shutil.which("qemu-img")))
    checks.append(implementation_check("agent_swarm.providers.hyperv.provider"))
    available = all(c.ok for c in checks if c.required)
    return ProbeResult("hyperv", DESCRIPTION, available, tuple(checks))
