"""Can this host run VMs through Apple's Virtualization.framework?"""

from __future__ import annotations

import platform
import sys

from agent_swarm.providers._probe_util import implementation_check
from agent_swarm.providers.base import Check, ProbeResult


def probe() -> ProbeResult:
    checks: list[Check] = []
    if sys.platform != "darwin":
        checks.append(
            Check("host", False, f"Virtualization.framework is macOS-only, not {sys.platform}")
        )
        return ProbeResult("vz", "macOS Virtualization.framework", False, tuple(checks))
    release = platform.mac_ver()[0] or "0"
    major = int(release.split(".")[0] or 0)
    checks.append(
        Check(
            "macos",
            major >= 13,
            f"macOS {release}",
            hint=None if major >= 13 else "macOS 13 (Ventura) or newer is needed",
        )
    )
    checks.append(implementation_check("agent_swarm.providers.vz.provider"))
    available = all(c.ok for c in checks if c.required)
    return ProbeResult("vz", "macOS Virtualization.framework", available, tuple(checks))
