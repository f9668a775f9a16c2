"""Small host checks shared by the providers' probe modules (no heavy imports)."""

from __future__ import annotations

import importlib.util
import socket

from agent_swarm.providers.base import Check


def implementation_check(module: str) -> Check:
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return Check("implementation", True, "present")
    return Check(
        "implementation",
        False,
        "not implemented in this version of agent-swarm yet",
        hint="upgrade agent-swarm when a release adds it",
    )


def unix_socket_accepts(path: str, timeout: float = 1.0) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
