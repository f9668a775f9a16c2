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


def _answers(timeout: float = 90) -> bool:
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    try:
        r = subprocess.run(
            [
                "virsh",
                "-c",
                "qemu:///system",
                "domcapabilities",
                "--virttype",
                "qemu",
                "--emulatorbin",
                qemu,
            ],
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[None]:
    """libvirtd and virtlogd, started (as daemons) when not running, and answering.

    A fresh libvirtd's first QEMU capabilities probe can hang (libvirt 9.0 here); a daemon
    this fixture started is restarted (by its PID) until it answers.
    """
    why = _why_not()
    if why:
        pytest.skip(why)
    if subprocess.run(["pgrep", "-x", "virtlogd"], capture_output=True).returncode != 0:
        subprocess.run(["virtlogd", "-d"], check=True)
    ours = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode != 0
    if ours:
        subprocess.run(["libvirtd", "-d"], check=True)
    for _attempt in range(3):
        deadline = time.monotonic() + 30
        while not os.path.exists(LIBVIRT_SOCK):
            assert time.monotonic() < deadline, "libvirtd did not create its socket"
            time.sleep(0.2)
        if _answers():
            break
        assert ours, "libvirtd (not started by the tests) does not answer: restart it"
        pid = int(Path("/run/libvirtd.pid").read_text())
        os.kill(pid, 9)
        time.sleep(1)
        Path("/run/libvirtd.pid").unlink(missing_ok=True)
        subprocess.run(["libvirtd", "-d"], check=True)
    else:
        pytest.fail("libvirtd did not answer after 3 restarts")
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
