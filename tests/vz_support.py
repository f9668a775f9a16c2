"""Building the agent-swarm-vz helper (portable core + fake backend) for tests, and a
reflink-capable XFS scratch filesystem (where clone_file clones, as clonefile does on APFS).
Importable: tests/ is on sys.path (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
VZ_SOURCE = REPO / "native" / "vz"


def find_cmake() -> str | None:
    found = shutil.which("cmake")
    if found:
        return found
    candidate = Path(sys.executable).parent / "cmake"
    return str(candidate) if candidate.exists() else None


def build_vz_helper(build: Path) -> Path:
    """Builds native/vz (fake backend) in ``build``; the agent-swarm-vz binary.

    Fails, rather than skips, when the toolchain is missing: CI has both."""
    cmake = find_cmake()
    if cmake is None:
        pytest.fail("cmake not found (PATH or the venv's bin); needed to build native/vz")
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")) and "CXX" not in os.environ:
        pytest.fail("no C++ compiler found (c++, g++, clang++ or $CXX); needed for native/vz")
    for cmd in (
        # The fake backend also on a Mac (tests/vz drive its knobs; ci/macos.sh checks the
        # real VZ build separately).
        [
            cmake,
            "-S",
            str(VZ_SOURCE),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DASVZ_FAKE_BACKEND=ON",
        ],
        [cmake, "--build", str(build), "-j2"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    binary = build / "agent-swarm-vz"
    if not binary.exists():
        pytest.fail(f"build finished but {binary} is missing")
    return binary


def write_config(vm_dir: Path, **fake: Any) -> Path:
    """A helper's vm.json in ``vm_dir`` (made if missing), with fake-backend knobs."""
    vm_dir.mkdir(parents=True, exist_ok=True)
    cfg = {
        "name": "t1",
        "dir": str(vm_dir),
        "cpus": 2,
        "memory_mib": 1024,
        "disk": str(vm_dir / "disk.img"),
        "mac": "52:54:00:12:34:56",
        "console_log": str(vm_dir / "console.log"),
        "fake": {"boot_ms": 50, **fake},
    }
    path = vm_dir / "vm.json"
    path.write_text(json.dumps(cfg))
    return path


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _why(proc: subprocess.CompletedProcess[str]) -> str:
    out = (proc.stderr or proc.stdout or "").strip().replace("\n", " ")
    return f"`{' '.join(proc.args)}` exited {proc.returncode}: {out[:300]}"


@contextmanager
def xfs_scratch(base: Path) -> Iterator[Path]:
    """A directory on a freshly made XFS filesystem with reflink=1 (loop device, ~2 GiB
    sparse backing file under ``base``); unmounted and detached afterwards. Skips (with the
    reason) where loop devices or root are missing."""
    if os.geteuid() != 0:
        pytest.skip("XFS scratch filesystem needs root (losetup + mount)")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("XFS scratch filesystem needs loop devices: /dev/loop-control is missing")
    for tool in ("mkfs.xfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"XFS scratch filesystem needs `{tool}`, which is not installed")
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
