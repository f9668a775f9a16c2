"""Shared fixtures. Tests import the installed package (pip install .), never the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def swarm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private AGENT_SWARM_HOME for one test."""
    home = tmp_path / "swarm-home"
    monkeypatch.setenv("AGENT_SWARM_HOME", str(home))
    yield home


def agent_swarm_exe() -> str:
    exe = Path(sys.executable).with_name("agent-swarm")
    if exe.exists():
        return str(exe)
    found = shutil.which("agent-swarm")
    assert found, "the agent-swarm entry point is not installed"
    return found


@pytest.fixture
def cli(swarm_home: Path):  # type: ignore[no-untyped-def]
    """Run the real `agent-swarm` executable; returns CompletedProcess (text)."""

    def run(
        *args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        e = {**os.environ, "AGENT_SWARM_HOME": str(swarm_home), **(env or {})}
        return subprocess.run(
            [agent_swarm_exe(), *args],
            input=input,
            capture_output=True,
            text=True,
            env=e,
            timeout=timeout,
        )

    return run
