"""Fixtures of the workflow tests (helpers: workflow_support.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # workflow_support (import-mode=importlib)

from workflow_support import Swarm, qemu_img, qemu_io_write


@pytest.fixture(scope="session")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pycache")


@pytest.fixture(scope="session")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small qcow2 base with known content (what a guest would read at offset 0)."""
    for tool in ("qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    img = tmp_path_factory.mktemp("base") / "tiny.qcow2"
    r = qemu_img("create", "-q", "-f", "qcow2", str(img), "256M")
    assert r.returncode == 0, r.stderr
    qemu_io_write(img, 0x11, "0")
    return img


@pytest.fixture(scope="session")
def make_swarm(tmp_path_factory: pytest.TempPathFactory, pycache: Path):  # type: ignore[no-untyped-def]
    """A new state directory, alone in its parent directory (the fake finds its VMs by
    path), with the fake provider and these capability overrides."""

    def make(tag: str, caps: str = "", fail: str = "") -> Swarm:
        home = tmp_path_factory.mktemp(tag).resolve() / "home"
        return Swarm(home, caps=caps, fail=fail, pycache=pycache)

    return make
