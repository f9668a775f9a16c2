"""Fixtures for tests against real libvirtd + QEMU guests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests_support import Swarm, domains_of


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (libvirtd system instance, image build)"
    for tool in ("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "mmdebstrap"):
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
    script = Path(__file__).resolve().parents[2] / "ci" / "start-libvirt.sh"
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"libvirtd is not usable: {r.stderr}"
    yield


@pytest.fixture(scope="module")
def swarm(libvirtd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    home = tmp_path_factory.mktemp("swarm") / "home"
    s = Swarm(home)
    yield s
    # Whatever a failed test left: remove our domains (only ours: by name prefix of this home).
    for d in domains_of(home):
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "destroy", d], capture_output=True, timeout=60
        )
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "undefine", d, "--snapshots-metadata"],
            capture_output=True,
            timeout=60,
        )
