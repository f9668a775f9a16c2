"""Shared fixtures. Tests import the installed package (pip install .), never the source tree."""

from __future__ import annotations

import os
import shutil
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


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (libvirtd system instance, image build)"
    for tool in ("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "mmdebstrap", "passt"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (bash ci/test.sh installs it)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed (pip install '.[libvirt]')"
    return None


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[None]:
    """libvirtd and virtlogd running and answering (ci/start-libvirt.sh starts them when
    they are not running, under a subreaper, and restarts its own libvirtd if it hangs)."""
    why = _why_not()
    if why:
        pytest.skip(why)
    script = Path(__file__).resolve().parents[1] / "ci" / "start-libvirt.sh"
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"libvirtd is not usable: {r.stderr}"
    yield
