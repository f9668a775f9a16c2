"""Fixtures for the native-core tests: real filesystems and real tools, no mocks."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _why(proc: subprocess.CompletedProcess[str]) -> str:
    out = (proc.stderr or proc.stdout or "").strip().replace("\n", " ")
    return f"`{' '.join(proc.args)}` exited {proc.returncode}: {out[:300]}"


@pytest.fixture(scope="session")
def xfs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory on a freshly made XFS filesystem with reflink=1 (loop device, ~2 GiB
    sparse backing file). Session scoped; unmounted and detached at the end."""
    if os.geteuid() != 0:
        pytest.skip("XFS scratch filesystem needs root (losetup + mount)")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("XFS scratch filesystem needs loop devices: /dev/loop-control is missing")
    for tool in ("mkfs.xfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"XFS scratch filesystem needs `{tool}`, which is not installed")

    base = tmp_path_factory.mktemp("xfs")
    image = base / "xfs.img"
    with open(image, "wb") as f:
        f.truncate(2 * 1024**3)
    proc = _run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)])
    if proc.returncode != 0:
        pytest.skip(f"cannot make an XFS filesystem with reflink: {_why(proc)}")
    proc = _run(["losetup", "--find", "--show", str(image)])
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.skip(f"cannot attach a loop device: {_why(proc)}")
    device = proc.stdout.strip()
    mountpoint = base / "mnt"
    mountpoint.mkdir()
    try:
        proc = _run(["mount", "-t", "xfs", device, str(mountpoint)])
        if proc.returncode != 0:
            pytest.skip(f"cannot mount the XFS loop device: {_why(proc)}")
        try:
            work = mountpoint / "work"
            work.mkdir()
            yield work
        finally:
            if _run(["umount", str(mountpoint)]).returncode != 0:
                _run(["umount", "-l", str(mountpoint)])
    finally:
        _run(["losetup", "-d", device])
        image.unlink(missing_ok=True)


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
