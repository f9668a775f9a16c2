"""Helpers shared by test modules (importable: tests/ is on sys.path via conftest)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

STRICT_TOOLS_ENV = "AGENT_SWARM_STRICT_TOOLS"


def strict_tools() -> bool:
    """Whether a missing test tool is a failure rather than a skip: set (=1) by ci/lib.sh's
    as_setup, which installs every tool the suite uses (the README's test command and .ci/run).
    Not `CI`: GitHub sets that on the macOS and Windows jobs too, which lack the Linux tools."""
    return os.environ.get(STRICT_TOOLS_ENV) == "1"


def agent_swarm_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("agent-swarm")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("agent-swarm")
    assert found, "the agent-swarm entry point is not installed"
    return [found]


class Swarm:
    """Runs the real `agent-swarm` CLI against one state directory."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def __call__(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 900,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [*agent_swarm_cmd(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env={**os.environ, "AGENT_SWARM_HOME": str(self.home), **(env or {})},
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"agent-swarm {' '.join(args)} exited {r.returncode}\n"
                f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-3000:]}"
            )
        return r

    def json(self, *args: str) -> object:
        return json.loads(self("--json", *args).stdout)

    def run(self, vm: str, command: str, *, project: bool = False) -> str:
        args = ("project", "run", vm, command) if project else ("run", vm, command)
        return self(*args).stdout


def domains_of(home: Path) -> list[str]:
    tag = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:6]
    out = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [d for d in out.split() if d.startswith(f"agent-swarm-{tag}-")]
