"""Fixtures for the native-core tests: real filesystems and real tools, no mocks."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vz_support import xfs_scratch


@pytest.fixture(scope="session")
def xfs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory on a freshly made XFS filesystem with reflink=1 (loop device, ~2 GiB
    sparse backing file). Session scoped; unmounted and detached at the end."""
    with xfs_scratch(tmp_path_factory.mktemp("xfs")) as work:
        yield work


@pytest.fixture
def xfs_tmp(xfs_dir: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh empty directory on the XFS scratch filesystem, removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix=request.node.name[:40] + "-", dir=xfs_dir))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        pytest.skip("qemu-img is not installed (apt-get install qemu-utils)")
    return path


@pytest.fixture(scope="session")
def vhdiinfo() -> str:
    path = shutil.which("vhdiinfo")
    if path is None:
        pytest.skip("vhdiinfo is not installed (apt-get install libvhdi-utils)")
    return path
