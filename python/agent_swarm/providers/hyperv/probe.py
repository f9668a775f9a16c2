"""Can this host run VMs through Hyper-V?"""

from __future__ import annotations

import shutil
import sys

from agent_swarm.providers._probe_util import implementation_check
from agent_swarm.providers.base import Check, ProbeResult


def probe() -> ProbeResult:
    checks: list[Check] = []
    if sys.platform != "win32":
        checks.append(Check("host", False, f"Hyper-V is Windows-only, not {sys.platform}"))
        return ProbeResult("hyperv", "Windows Hyper-V", False, tuple(checks))
    ps = shutil.which("powershell.exe") or shutil.which("pwsh.exe")
    checks.append(
        Check("powershell", ps is not None, ps or "PowerShell not found", hint="install PowerShell")
    )
    checks.append(implementation_check("agent_swarm.providers.hyperv.provider"))
    available = all(c.ok for c in checks if c.required)
    return ProbeResult("hyperv", "Windows Hyper-V", available, tuple(checks))
