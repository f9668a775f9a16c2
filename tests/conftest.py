"""Shared fixtures. Tests import the installed package (pip install .), never the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for tests_support (import-mode=importlib)

from tests_support import agent_swarm_cmd


@pytest.fixture
def swarm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private AGENT_SWARM_HOME for one test."""
    home = tmp_path / "swarm-home"
    monkeypatch.setenv("AGENT_SWARM_HOME", str(home))
    yield home


@pytest.fixture
def cli(swarm_home: Path):  # type: ignore[no-untyped-def]
    """Run the real `agent-swarm` executable; returns CompletedProcess (text)."""

    def run(
        *args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        e = {**os.environ, "AGENT_SWARM_HOME": str(swarm_home), **(env or {})}
        return subprocess.run(
            [*agent_swarm_cmd(), *args],
            input=input,
            capture_output=True,
            text=True,
            env=e,
            timeout=timeout,
        )

    return run
