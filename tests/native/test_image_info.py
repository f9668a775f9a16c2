"""Native image inspection (detect_format, image_info, backing chains) against qemu-img."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent_swarm import native

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-img") and shutil.which("qemu-io")), reason="needs qemu-img and qemu-io"
)

MiB = 1 << 20


def qemu_img(*args: str | os.PathLike[str]) -> str:
    return subprocess.run(
        ["qemu-img", *map(os.fspath, args)], check=True, capture_output=True, text=True
    ).stdout


def qinfo(path: Path, chain: bool = False) -> object:
    args = ["info", "--output=json"] + (["--backing-chain"] if chain else [])
    return json.loads(qemu_img(*args, path))


def create(path: Path, fmt: str, size: int | str, *opts: str) -> Path:
    qemu_img("create", "-q", "-f", fmt, *opts, path, str(size))
    return path


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# ---- against qemu-img info -----------------------------------------------------------------


@pytest.mark.parametrize(
    "opts",
    [
        [],
        ["-o", "compat=0.10"],
        ["-o", "cluster_size=512"],
        ["-o", "cluster_size=2M,refcount_bits=64"],
        ["-o", "compat=0.10,cluster_size=4096"],
    ],
    ids=["v3", "v2", "v3-512", "v3-2M", "v2-4k"],
)
def test_qcow2_matches_qemu(tmp_path: Path, opts: list[str]) -> None:
    img = create(tmp_path / "a.qcow2", "qcow2", 10 * 1024 * MiB + 3 * 512, *opts)
    q = qinfo(img)
    assert isinstance(q, dict)
    info = native.image_info(img, chain=False)
    assert info.format == q["format"] == "qcow2"
    assert info.virtual_size == q["virtual-size"]
    assert info.cluster_size == q["cluster-size"]
    assert info.actual_size == q["actual-size"] == img.stat().st_blocks * 512
    assert info.backing_file is None and info.backing_path is None
    assert info.backing_format is None
    assert info.path == str(img)
    assert native.detect_format(img) == "qcow2"


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
@pytest.mark.parametrize("backing_fmt", ["raw", "qcow2"])
def test_qcow2_with_backing_matches_qemu(tmp_path: Path, compat: str, backing_fmt: str) -> None:
    base = create(tmp_path / "base.img", backing_fmt, 64 * MiB)
    top = create(
        tmp_path / "top.qcow2",
        "qcow2",
        128 * MiB,
        "-o",
        f"compat={compat}",
        "-b",
        "base.img",
        "-F",
        backing_fmt,
    )
    q = qinfo(top)
    assert isinstance(q, dict)
    info = native.image_info(top, chain=False)
    assert info.virtual_size == q["virtual-size"] == 128 * MiB
    assert info.backing_file == q["backing-filename"] == "base.img"
    assert info.backing_path == q["full-backing-filename"] == str(base)
    assert info.backing_format == q["backing-filename-format"] == backing_fmt
    assert info.backing_chain == ()


def test_raw_matches_qemu(tmp_path: Path) -> None:
    img = create(tmp_path / "disk.img", "raw", 100 * MiB)
    subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 1 0 1M", str(img)], check=True, capture_output=True
    )
    q = qinfo(img)
    assert isinstance(q, dict)
    info = native.image_info(img)
    assert info.format == q["format"] == "raw"
    assert info.virtual_size == q["virtual-size"]
    assert info.actual_size == q["actual-size"]
    assert info.cluster_size == 0
    assert info.backing_file is None and info.backing_chain == ()
    assert native.detect_format(img) == "raw"


def test_three_deep_chain(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    create(tmp_path / "base" / "base.raw", "raw", 32 * MiB)
    mid = create(
        tmp_path / "mid.qcow2",
        "qcow2",
        32 * MiB,
        "-o",
        "cluster_size=4096",
        "-b",
        "base/base.raw",
        "-F",
        "raw",
    )
    top = create(tmp_path / "top.qcow2", "qcow2", 64 * MiB, "-b", str(mid), "-F", "qcow2")
    q = qinfo(top, chain=True)
    assert isinstance(q, list) and len(q) == 3

    info = native.image_info(top)
    nodes = [info, *info.backing_chain]
    assert len(nodes) == 3
    for ours, theirs in zip(nodes, q, strict=False):
        assert ours.path == theirs["filename"]
        assert ours.format == theirs["format"]
        assert ours.virtual_size == theirs["virtual-size"]
        assert ours.backing_file == theirs.get("backing-filename")
        assert ours.backing_path == theirs.get("full-backing-filename")
        assert ours.backing_format == theirs.get("backing-filename-format")
        assert ours.cluster_size == theirs.get("cluster-size", 0)
    assert info.backing_chain[0].backing_chain == (info.backing_chain[1],)
    assert info.chain_actual_size == sum(n.actual_size for n in nodes)
    assert native.image_info(top, chain=False).backing_chain == ()


def test_backing_format_not_recorded_is_detected(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2", "qcow2", 4 * MiB)
    top = create(
        tmp_path / "top.qcow2",
        "qcow2",
        4 * MiB,
        "-o",
        "compat=0.10",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
    )
    # Turn the backing-format extension (right after the 72-byte v2 header) into the end marker.
    assert top.read_bytes()[72:76] == bytes.fromhex("e2792aca")
    patch(top, 72, bytes(8))
    assert "backing-filename-format" not in qinfo(top)  # type: ignore[operator]
    info = native.image_info(top, chain=False)
    assert info.backing_file == "base.qcow2" and info.backing_format == "qcow2"
    assert native.image_info(top).backing_chain[0].path == str(base)
    # A missing backing file leaves the format unknown but is not an error...
    base.unlink()
    info = native.image_info(top, chain=False)
    assert info.backing_path == str(base) and info.backing_format is None
    # ...except when walking the chain.
    with pytest.raises(FileNotFoundError) as ei:
        native.image_info(top)
    assert ei.value.filename == str(base)


def test_missing_backing(tmp_path: Path) -> None:
    base = create(tmp_path / "base.raw", "raw", MiB)
    top = create(tmp_path / "top.qcow2", "qcow2", MiB, "-b", "base.raw", "-F", "raw")
    base.unlink()
    info = native.image_info(top, chain=False)
    assert info.backing_format == "raw" and info.backing_path == str(base)
    with pytest.raises(FileNotFoundError) as ei:
        native.image_info(top)
    assert ei.value.filename == str(base)
    assert ei.value.errno == 2


def test_recorded_backing_format_must_match(tmp_path: Path) -> None:
    create(tmp_path / "base.qcow2", "qcow2", MiB)
    top = tmp_path / "top.qcow2"
    native.create_qcow2_overlay(top, "base.qcow2")
    # Rewrite the recorded "qcow2" as "raw\0\0" in the backing-format extension.
    data = top.read_bytes()
    i = data.index(bytes.fromhex("e2792aca"))
    patch(top, i + 4, (3).to_bytes(4, "big") + b"raw\0\0")
    assert native.image_info(top, chain=False).backing_format == "raw"
    with pytest.raises(native.InvalidImageError, match="records the backing format as raw"):
        native.image_info(top)


def test_cycle(tmp_path: Path) -> None:
    a = create(tmp_path / "a.qcow2", "qcow2", MiB)
    b = create(tmp_path / "b.qcow2", "qcow2", MiB, "-b", "a.qcow2", "-F", "qcow2")
    qemu_img("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a)
    with pytest.raises(native.InvalidImageError, match="cycle"):
        native.image_info(b)
    with pytest.raises(native.InvalidImageError, match="cycle"):
        native.convert_qcow2_to_raw(b, tmp_path / "out.raw")
    # Self-reference, through a symlink.
    os.symlink("c.qcow2", tmp_path / "link.qcow2")
    c = create(tmp_path / "c.qcow2", "qcow2", MiB)
    qemu_img("rebase", "-u", "-b", "link.qcow2", "-F", "qcow2", c)
    with pytest.raises(native.InvalidImageError, match="cycle"):
        native.image_info(c)
    assert not (tmp_path / "out.raw").exists()


def test_depth_limit(tmp_path: Path) -> None:
    prev = create(tmp_path / "l0.raw", "raw", MiB)
    for i in range(1, 65):
        cur = tmp_path / f"l{i}.qcow2"
        native.create_qcow2_overlay(cur, prev.name)
        prev = cur
    # 64 backing files is the limit...
    info = native.image_info(prev)
    assert len(info.backing_chain) == 64
    assert info.backing_chain[-1].format == "raw"
    # ...65 is too deep.
    top = tmp_path / "l65.qcow2"
    native.create_qcow2_overlay(top, prev.name)
    with pytest.raises(native.InvalidImageError, match="deeper than 64"):
        native.image_info(top)
    assert native.image_info(top, chain=False).backing_file == prev.name


# ---- detection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, opts, name",
    [
        ("vmdk", [], "VMDK"),
        ("vmdk", ["-o", "subformat=monolithicFlat"], "VMDK"),
        ("vdi", [], "VDI"),
        ("vpc", [], "VHD"),
        ("vpc", ["-o", "subformat=fixed"], "VHD"),
        ("qed", [], "QED"),
        ("parallels", [], "Parallels"),
    ],
)
def test_unsupported_formats(tmp_path: Path, fmt: str, opts: list[str], name: str) -> None:
    img = create(tmp_path / f"x.{fmt}", fmt, 4 * MiB, *opts)
    with pytest.raises(native.InvalidImageError, match=f"unsupported image format {name}") as ei:
        native.detect_format(img)
    assert ei.value.filename == str(img)  # type: ignore[attr-defined]
    with pytest.raises(native.InvalidImageError, match="unsupported image format"):
        native.image_info(img)


@pytest.mark.parametrize("size", [0, 777, 513])
def test_not_a_disk_image(tmp_path: Path, size: int) -> None:
    p = tmp_path / "junk"
    p.write_bytes(os.urandom(size))
    with pytest.raises(native.InvalidImageError, match="does not look like a disk image"):
        native.detect_format(p)
    with pytest.raises(native.InvalidImageError):
        native.image_info(p)


def test_os_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as ei:
        native.detect_format(tmp_path / "nope")
    assert ei.value.filename == str(tmp_path / "nope")
    with pytest.raises(IsADirectoryError):
        native.image_info(tmp_path)
    with pytest.raises(ValueError):
        native.image_info("")


# Corruptions of a real qcow2 header: (offset, bytes, message)
CORRUPTIONS = [
    (4, (4).to_bytes(4, "big"), "unsupported qcow2 version 4"),
    (4, (1).to_bytes(4, "big"), "QCOW \\(version 1\\)"),
    (20, (8).to_bytes(4, "big"), "cluster_bits 8"),
    (20, (22).to_bytes(4, "big"), "cluster_bits 22"),
    (100, (96).to_bytes(4, "big"), "header_length"),
    (100, (1 << 20).to_bytes(4, "big"), "header_length"),
    (96, (7).to_bytes(4, "big"), "refcount_order"),
    (72, (1 << 10).to_bytes(8, "big"), "incompatible feature"),
    (104, b"\x05", "compression type"),
    (104, b"\x01", "disagree"),
    (36, (0).to_bytes(4, "big"), "L1 table .* too small"),
    (40, (0x30200).to_bytes(8, "big"), "not cluster-aligned"),
    (40, (1 << 40).to_bytes(8, "big"), "truncated"),
    (56, (0).to_bytes(4, "big"), "no refcount table"),
    (16, (1024).to_bytes(4, "big"), "backing file name too long"),
    (8, (70000).to_bytes(8, "big"), "backing file name offset"),
    (32, (3).to_bytes(4, "big"), "encryption"),
    (112 + 4, (16).to_bytes(4, "big"), "backing format name too long"),
    (112 + 4, (0xFFFF).to_bytes(4, "big"), "overruns"),
]


@pytest.mark.parametrize("offset, data, match", CORRUPTIONS)
def test_corrupt_headers(tmp_path: Path, offset: int, data: bytes, match: str) -> None:
    create(tmp_path / "base.raw", "raw", MiB)
    img = tmp_path / "img.qcow2"
    native.create_qcow2_overlay(img, "base.raw", size=64 * MiB)
    native.image_info(img)  # valid before
    patch(img, offset, data)
    with pytest.raises(native.InvalidImageError, match=match):
        native.image_info(img, chain=False)
    with pytest.raises(native.InvalidImageError):
        native.create_qcow2_overlay(tmp_path / "top.qcow2", img)
    assert not (tmp_path / "top.qcow2").exists()


@pytest.mark.parametrize("length", [0, 3, 50, 71, 72, 103, 111, 200, 0x210 + 3])
def test_truncated_qcow2(tmp_path: Path, length: int) -> None:
    create(tmp_path / "base.raw", "raw", MiB)
    full = tmp_path / "full.qcow2"
    native.create_qcow2_overlay(full, "base.raw")
    img = tmp_path / "img.qcow2"
    img.write_bytes(full.read_bytes()[:length])
    with pytest.raises(native.InvalidImageError, match=r"truncated|does not look like"):
        native.image_info(img)
