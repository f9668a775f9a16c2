"""Fixtures for tests against real libvirtd + QEMU guests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests_support import Swarm, domains_of


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
