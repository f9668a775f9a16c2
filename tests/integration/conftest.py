"""Fixtures for tests against real libvirtd + QEMU guests."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests_support import Swarm, domains_of

LIBVIRT_SOCK = "/run/libvirt/libvirt-sock"


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
    """libvirtd and virtlogd, started (as daemons) when not running."""
    why = _why_not()
    if why:
        pytest.skip(why)
    for daemon, pidfile in (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")):
        if subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode != 0:
            subprocess.run([daemon, "-d"], check=True)
            assert Path(pidfile).exists() or daemon == "virtlogd"
    deadline = time.monotonic() + 30
    while not os.path.exists(LIBVIRT_SOCK):
        assert time.monotonic() < deadline, "libvirtd did not create its socket"
        time.sleep(0.2)
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
        subprocess.run(["virsh", "-c", "qemu:///system", "undefine", d,
                        "--snapshots-metadata"], capture_output=True, timeout=60)  # fmt: skip
