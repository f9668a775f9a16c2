"""The installed package is a complete build, on every platform a wheel is made for: cibuildwheel's
test-command runs this file against each wheel (pyproject.toml), the Linux wheel test runs it
against the zig-built manylinux wheel, and the normal suite against `pip install .`.

What a wheel could silently lack: the native module itself, zlib (without it compressed qcow2
clusters, i.e. every cloud image, are refused at run time), and on macOS the signed VZ helper.
The compressed qcow2 here is written by hand (no qemu-img on cibuildwheel's test machines)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import zlib
from pathlib import Path

import pytest

import agent_swarm
from agent_swarm import native

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS


def test_imported_from_the_installation() -> None:
    """Not from a source tree: the package and its native module are under this
    interpreter's site-packages."""
    roots = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    for mod in (agent_swarm, agent_swarm._native):  # type: ignore[attr-defined]
        path = Path(mod.__file__ or "").resolve()
        assert any(path.is_relative_to(r) for r in roots), (path, roots)


def compressed_qcow2(path: Path, payload: bytes) -> None:
    """A one-cluster qcow2 v3 image whose only cluster is deflate-compressed, as QEMU writes
    them (raw deflate, 4 KiB window). Clusters: 0 header, 1 L1, 2 L2, 3 refcount table,
    4 refcount block, 5 the compressed data."""
    assert len(payload) == CLUSTER
    c = zlib.compressobj(9, zlib.DEFLATED, -12)
    data = c.compress(payload) + c.flush()
    coff = 5 * CLUSTER
    sectors = (coff % 512 + len(data) + 511) // 512
    shift = 62 - (CLUSTER_BITS - 8)
    entry = (1 << 62) | ((sectors - 1) << shift) | coff
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQII",
        b"QFI\xfb",
        3,  # version
        0,  # backing file offset
        0,  # backing file name length
        CLUSTER_BITS,
        CLUSTER,  # virtual size
        0,  # no encryption
        1,  # L1 entries
        1 * CLUSTER,  # L1 table
        3 * CLUSTER,  # refcount table
        1,  # refcount table clusters
        0,  # snapshots
        0,
        0,  # incompatible features
        0,  # compatible features
        0,  # autoclear features
        4,  # refcount order: 16-bit refcounts
        104,  # header length
    )
    img = bytearray(5 * CLUSTER)
    img[: len(header)] = header
    img[CLUSTER : CLUSTER + 8] = struct.pack(">Q", (1 << 63) | 2 * CLUSTER)  # L1[0], copied
    img[2 * CLUSTER : 2 * CLUSTER + 8] = struct.pack(">Q", entry)  # L2[0], compressed
    img[3 * CLUSTER : 3 * CLUSTER + 8] = struct.pack(">Q", 4 * CLUSTER)
    img[4 * CLUSTER : 4 * CLUSTER + 12] = struct.pack(">6H", *[1] * 6)
    path.write_bytes(bytes(img) + data)


def test_compressed_clusters_are_read(tmp_path: Path) -> None:
    """zlib is compiled in: a compressed cluster converts to the right bytes."""
    payload = (b"agent-swarm wheel " * 4000)[:CLUSTER]
    src, dst = tmp_path / "c.qcow2", tmp_path / "c.raw"
    compressed_qcow2(src, payload)
    assert native.image_info(src).format == "qcow2"
    native.convert_qcow2_to_raw(src, dst)
    assert dst.read_bytes() == payload


def test_clone_and_overlay(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    base.write_bytes(os.urandom(1 << 20))
    native.clone_file(base, tmp_path / "copy.img")
    assert (tmp_path / "copy.img").read_bytes() == base.read_bytes()
    native.create_qcow2_overlay(tmp_path / "task.qcow2", tmp_path / "copy.img")
    info = native.image_info(tmp_path / "task.qcow2")
    assert info.format == "qcow2" and info.virtual_size == 1 << 20


HELPER = Path(agent_swarm.__file__).parent / "bin" / "agent-swarm-vz"


@pytest.mark.skipif(sys.platform != "darwin", reason="the VZ helper ships in macOS wheels only")
def test_macos_helper_is_signed_with_the_entitlement() -> None:
    assert HELPER.is_file() and os.access(HELPER, os.X_OK), HELPER
    subprocess.run(["codesign", "--verify", "--strict", str(HELPER)], check=True, timeout=60)
    out = subprocess.run(
        ["codesign", "-d", "--entitlements", "-", str(HELPER)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "com.apple.security.virtualization" in out.stdout + out.stderr
    version = subprocess.run(
        [str(HELPER), "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "backend vz" in version, version


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS wheels carry the helper")
def test_no_helper_off_macos() -> None:
    assert not HELPER.exists()


def test_cli_entry_point() -> None:
    exe = shutil.which("agent-swarm", path=str(Path(sys.executable).parent)) or shutil.which(
        "agent-swarm"
    )
    assert exe, "the agent-swarm entry point is not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert agent_swarm.__version__ in out.stdout
