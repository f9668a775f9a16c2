"""VHDX: native.create_vhdx_differencing and the native VHDX reader, checked against
independent implementations: qemu-img/qemu-io (parents), libvhdi's vhdiinfo/vhdimount, a
small MS-VHDX parser written here, and dissect.hypervisor when it is installed."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent_swarm import native

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

BAT_REGION = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83 = uuid.UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_LOCATOR_TYPE = uuid.UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")


# ------------------------------------------------------------ an independent VHDX parser


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def checksum_ok(block: bytes) -> bool:
    stored = struct.unpack_from("<I", block, 4)[0]
    return crc32c(block[:4] + b"\0\0\0\0" + block[8:]) == stored


def guid(b: bytes) -> uuid.UUID:
    return uuid.UUID(bytes_le=bytes(b))


def parse_header(raw: bytes) -> dict[str, Any]:
    sig, _, seq = struct.unpack_from("<4sIQ", raw, 0)
    log_version, version, log_length, log_offset = struct.unpack_from("<HHIQ", raw, 64)
    return {
        "valid": sig == b"head" and checksum_ok(raw),
        "seq": seq,
        "file_write": guid(raw[16:32]),
        "data_write": guid(raw[32:48]),
        "log_guid": guid(raw[48:64]),
        "log_version": log_version,
        "version": version,
        "log_length": log_length,
        "log_offset": log_offset,
    }


def current_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        f.seek(64 * KiB)
        h1 = parse_header(f.read(4 * KiB))
        f.seek(128 * KiB)
        h2 = parse_header(f.read(4 * KiB))
    valid = [h for h in (h1, h2) if h["valid"]]
    assert valid, "no valid header"
    return max(valid, key=lambda h: h["seq"])


def parse_vhdx(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        data = f.read(4 * MiB)  # everything but the BAT body lies in the first 4 MiB here
        file_size = os.fstat(f.fileno()).st_size
    out: dict[str, Any] = {"file_size": file_size}
    out["signature"] = data[:8]
    out["creator"] = data[8 : 8 + 512].decode("utf-16-le").rstrip("\0")
    out["headers"] = [parse_header(data[o : o + 4 * KiB]) for o in (64 * KiB, 128 * KiB)]
    tables = []
    for off in (192 * KiB, 256 * KiB):
        rt = data[off : off + 64 * KiB]
        sig, _, count = struct.unpack_from("<4sII", rt, 0)
        entries = {}
        for i in range(count):
            e = rt[16 + 32 * i : 48 + 32 * i]
            fo, ln, req = struct.unpack_from("<QII", e, 16)
            entries[guid(e[:16])] = (fo, ln, req)
        tables.append(
            {"sig": sig, "valid": sig == b"regi" and checksum_ok(rt), "entries": entries, "raw": rt}
        )
    out["region_tables"] = tables
    meta_off, meta_len, _ = tables[0]["entries"][METADATA_REGION]
    with open(path, "rb") as f:
        f.seek(meta_off)
        meta = f.read(meta_len)
    assert meta[:8] == b"metadata"
    (count,) = struct.unpack_from("<H", meta, 10)
    items: dict[uuid.UUID, tuple[int, bytes]] = {}
    for i in range(count):
        e = meta[32 + 32 * i : 64 + 32 * i]
        off, ln, flags = struct.unpack_from("<III", e, 16)
        items[guid(e[:16])] = (flags, meta[off : off + ln])
    out["items"] = items
    block_size, params = struct.unpack("<II", items[FILE_PARAMETERS][1])
    out["block_size"] = block_size
    out["leave_blocks_allocated"] = bool(params & 1)
    out["has_parent"] = bool(params & 2)
    out["virtual_size"] = struct.unpack("<Q", items[VIRTUAL_DISK_SIZE][1])[0]
    out["logical_sector"] = struct.unpack("<I", items[LOGICAL_SECTOR][1])[0]
    out["physical_sector"] = struct.unpack("<I", items[PHYSICAL_SECTOR][1])[0]
    if PARENT_LOCATOR in items:
        pl = items[PARENT_LOCATOR][1]
        out["locator_type"] = guid(pl[:16])
        (n,) = struct.unpack_from("<H", pl, 18)
        kv = {}
        for i in range(n):
            ko, vo, kl, vl = struct.unpack_from("<IIHH", pl, 20 + 12 * i)
            kv[pl[ko : ko + kl].decode("utf-16-le")] = pl[vo : vo + vl].decode("utf-16-le")
        out["locator"] = kv
    return out


# ------------------------------------------------------------------------------ helpers


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def vhdiinfo_fields(vhdiinfo: str, path: Path) -> dict[str, str]:
    proc = run(vhdiinfo, str(path))
    fields = {}
    for line in proc.stdout.splitlines():
        if ":" in line and line.startswith("\t"):
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


def make_parent(qemu_img: str, path: Path, size: str = "64M", *opts: str) -> Path:
    args = [qemu_img, "create", "-q", "-f", "vhdx"]
    if opts:
        args += ["-o", ",".join(opts)]
    run(*args, str(path), size)
    return path


def write_pattern(path: Path, *writes: tuple[int, int, int]) -> None:
    """Write (pattern byte, offset, length) into a VHDX with qemu-io."""
    qemu_io = shutil.which("qemu-io")
    if qemu_io is None:
        pytest.skip("qemu-io is not installed")
    cmds: list[str] = []
    for pattern, off, length in writes:
        cmds += ["-c", f"write -P {pattern:#x} {off} {length}"]
    run(qemu_io, "-f", "vhdx", *cmds, str(path))


@pytest.fixture
def parent(tmp_path: Path, qemu_img: str) -> Path:
    return make_parent(qemu_img, tmp_path / "parent.vhdx", "64M")


# --------------------------------------------------- children checked by other tools


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_vhdiinfo_reads_child(tmp_path: Path, qemu_img: str, vhdiinfo: str, subformat: str) -> None:
    parent = make_parent(qemu_img, tmp_path / "parent.vhdx", "64M", f"subformat={subformat}")
    child = tmp_path / "child.vhdx"
    native.create_vhdx_differencing(child, parent)

    fields = vhdiinfo_fields(vhdiinfo, child)
    assert fields["Disk type"] == "Differential"
    assert "(67108864 bytes)" in fields["Media size"]
    assert fields["Bytes per sector"] == "512 bytes"
    assert uuid.UUID(fields["Parent identifier"]) == current_header(parent)["data_write"]
    assert fields["Parent filename"].replace("\\", "/").endswith("/parent.vhdx")
    # vhdiinfo's "Identifier" of an image is its DataWriteGuid: the child has a fresh one.
    assert uuid.UUID(fields["Identifier"]) == current_header(child)["data_write"]
    assert uuid.UUID(fields["Identifier"]) != current_header(parent)["data_write"]
    assert sorted(os.listdir(tmp_path)) == ["child.vhdx", "parent.vhdx"]


def test_child_structure(tmp_path: Path, qemu_img: str) -> None:
    parent = make_parent(qemu_img, tmp_path / "parent.vhdx", "1G", "block_size=1M")
    child = tmp_path / "child.vhdx"
    native.create_vhdx_differencing(child, parent)
    p, c = parse_vhdx(parent), parse_vhdx(child)

    assert c["signature"] == b"vhdxfile"
    assert c["creator"] == "agent-swarm"
    h1, h2 = c["headers"]
    assert h1["valid"] and h2["valid"]
    assert h1["seq"] != h2["seq"]
    for h in (h1, h2):
        assert h["version"] == 1 and h["log_version"] == 0
        assert h["log_guid"] == uuid.UUID(int=0)
        assert h["log_offset"] == MiB and h["log_length"] == MiB
        assert h["data_write"] == h1["data_write"] and h["file_write"] == h1["file_write"]
    assert h1["data_write"] != h1["file_write"]

    rt1, rt2 = c["region_tables"]
    assert rt1["valid"] and rt2["valid"] and rt1["raw"] == rt2["raw"]
    bat_off, bat_len, bat_req = rt1["entries"][BAT_REGION]
    meta_off, meta_len, meta_req = rt1["entries"][METADATA_REGION]
    assert bat_req & 1 and meta_req & 1
    assert bat_off % MiB == 0 and bat_len % MiB == 0 and meta_off % MiB == 0
    regions = sorted([(MiB, MiB), (meta_off, meta_len), (bat_off, bat_len)])
    for (a, al), (b, _) in itertools.pairwise(regions):
        assert a + al <= b, "regions overlap"

    assert c["block_size"] == p["block_size"] == MiB
    assert c["virtual_size"] == p["virtual_size"] == GiB
    assert c["logical_sector"] == p["logical_sector"]
    assert c["physical_sector"] == p["physical_sector"]
    assert c["has_parent"] and not c["leave_blocks_allocated"]
    flags = {k: v[0] for k, v in c["items"].items()}
    assert flags[FILE_PARAMETERS] == 0b100 and flags[PARENT_LOCATOR] == 0b100
    for item in (VIRTUAL_DISK_SIZE, PAGE83, LOGICAL_SECTOR, PHYSICAL_SECTOR):
        assert flags[item] == 0b110
    assert guid(c["items"][PAGE83][1]) != guid(p["items"][PAGE83][1])

    assert c["locator_type"] == VHDX_LOCATOR_TYPE
    loc = c["locator"]
    assert loc["parent_linkage"] == f"{{{current_header(parent)['data_write']}}}"
    assert loc["relative_path"] == ".\\parent.vhdx"
    assert loc["absolute_win32_path"] == str(parent.resolve())

    # BAT: payload + sector-bitmap entries (chunk ratio 2^23 * 512 / 1 MiB = 4096),
    # all NOT_PRESENT, and the file ends where the BAT does.
    chunk_ratio = (1 << 23) * 512 // MiB
    data_blocks = GiB // MiB
    entries = -(-data_blocks // chunk_ratio) * (chunk_ratio + 1)
    assert bat_len >= entries * 8
    assert c["file_size"] == bat_off + bat_len
    with open(child, "rb") as f:
        f.seek(bat_off)
        assert f.read(bat_len) == bytes(bat_len)
    assert os.stat(child).st_blocks * 512 < 2 * MiB  # log + BAT are holes


@pytest.mark.parametrize(
    "parent_rel, child_rel, expected",
    [
        ("p.vhdx", "c.vhdx", ".\\p.vhdx"),
        ("p.vhdx", "sub/c.vhdx", "..\\p.vhdx"),
        ("base/p.vhdx", "c.vhdx", ".\\base\\p.vhdx"),
        ("base/p.vhdx", "a/b/c.vhdx", "..\\..\\base\\p.vhdx"),
        ("x/./y/../p.vhdx", "x//c.vhdx", ".\\p.vhdx"),
        ("pärent ✓.vhdx", "c.vhdx", ".\\pärent ✓.vhdx"),
    ],
)
def test_parent_locator_paths(
    tmp_path: Path,
    qemu_img: str,
    monkeypatch: pytest.MonkeyPatch,
    parent_rel: str,
    child_rel: str,
    expected: str,
) -> None:
    parent = tmp_path / parent_rel
    parent.parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / child_rel).parent.mkdir(parents=True, exist_ok=True)
    make_parent(qemu_img, parent, "16M")
    monkeypatch.chdir(tmp_path)  # relative arguments are taken from the cwd
    native.create_vhdx_differencing(child_rel, parent_rel)
    loc = parse_vhdx(tmp_path / child_rel)["locator"]
    assert loc["relative_path"] == expected
    assert loc["absolute_win32_path"] == os.path.normpath(str(tmp_path / parent_rel))


def test_chain_of_children(tmp_path: Path, parent: Path, vhdiinfo: str) -> None:
    c1, c2 = tmp_path / "c1.vhdx", tmp_path / "c2.vhdx"
    native.create_vhdx_differencing(c1, parent)
    native.create_vhdx_differencing(c2, c1)
    fields = vhdiinfo_fields(vhdiinfo, c2)
    assert fields["Disk type"] == "Differential"
    assert uuid.UUID(fields["Parent identifier"]) == current_header(c1)["data_write"]
    assert parse_vhdx(c2)["locator"]["relative_path"] == ".\\c1.vhdx"


def test_large_disk(tmp_path: Path, qemu_img: str, vhdiinfo: str) -> None:
    parent = make_parent(qemu_img, tmp_path / "big.vhdx", "4T")
    child = tmp_path / "child.vhdx"
    native.create_vhdx_differencing(child, parent)
    fields = vhdiinfo_fields(vhdiinfo, child)
    assert f"({4 * 1024**4} bytes)" in fields["Media size"]
    assert os.stat(child).st_blocks * 512 < 2 * MiB


def test_qemu_img_on_child(tmp_path: Path, parent: Path, qemu_img: str) -> None:
    """qemu (through 9.x) does not implement VHDX differencing images; when it can open
    the child, its answer must agree."""
    child = tmp_path / "child.vhdx"
    native.create_vhdx_differencing(child, parent)
    proc = run(qemu_img, "info", "--output=json", str(child), check=False)
    if proc.returncode == 0:
        import json

        info = json.loads(proc.stdout)
        assert info["format"] == "vhdx" and info["virtual-size"] == 64 * MiB
    else:
        assert "not supported" in proc.stderr.lower(), proc.stderr


def test_qemu_accepts_structure_without_differencing_marks(
    tmp_path: Path, parent: Path, qemu_img: str
) -> None:
    """Clear HasParent and drop the parent-locator entry from a copy of the child: what
    remains must be a dynamic VHDX that qemu opens, checks, writes and checks again
    (headers, region tables, metadata, BAT and log placement)."""
    child = tmp_path / "child.vhdx"
    native.create_vhdx_differencing(child, parent)
    plain = tmp_path / "plain.vhdx"
    shutil.copyfile(child, plain)
    c = parse_vhdx(child)
    meta_off = c["region_tables"][0]["entries"][METADATA_REGION][0]
    with open(plain, "r+b") as f:
        f.seek(meta_off)
        table = bytearray(f.read(64 * KiB))
        (count,) = struct.unpack_from("<H", table, 10)
        ids = [guid(table[32 + 32 * i : 48 + 32 * i]) for i in range(count)]
        assert ids[-1] == PARENT_LOCATOR
        fp = ids.index(FILE_PARAMETERS)
        fp_off = struct.unpack_from("<I", table, 32 + 32 * fp + 16)[0]
        struct.pack_into("<H", table, 10, count - 1)
        table[32 + 32 * (count - 1) : 64 + 32 * (count - 1)] = bytes(32)
        f.seek(meta_off)
        f.write(table)
        f.seek(meta_off + fp_off + 4)
        f.write(struct.pack("<I", 0))

    run(qemu_img, "check", str(plain))
    info = run(qemu_img, "info", str(plain)).stdout
    assert "virtual size: 64 MiB (67108864 bytes)" in info
    write_pattern(plain, (0xAB, 0, MiB), (0xCD, 40 * MiB, 3 * MiB))
    run(qemu_img, "check", str(plain))


def _raw_of(qemu_img: str, image: Path, out: Path) -> bytes:
    run(qemu_img, "convert", "-O", "raw", str(image), str(out))
    return out.read_bytes()


def test_child_reads_as_parent_with_dissect(tmp_path: Path, qemu_img: str) -> None:
    vhdx_mod = pytest.importorskip(
        "dissect.hypervisor.disk.vhdx",
        reason="dissect.hypervisor (an independent VHDX reader) is not installed",
    )
    work = tmp_path / "work"
    (work / "children").mkdir(parents=True)
    parent = make_parent(qemu_img, work / "parent.vhdx", "64M")
    write_pattern(parent, (0x5A, 0, 2 * MiB), (0x33, 40 * MiB + 512, 3 * MiB))
    expected = _raw_of(qemu_img, parent, tmp_path / "parent.raw")
    native.create_vhdx_differencing(work / "children" / "child.vhdx", parent)

    # Move the pair: the absolute path goes stale, the relative one still finds the parent.
    moved = tmp_path / "moved"
    work.rename(moved)
    disk = vhdx_mod.VHDX(moved / "children" / "child.vhdx")
    assert disk.size == 64 * MiB
    assert disk.read(disk.size) == expected


@pytest.mark.root
@pytest.mark.timeout(120)
def test_vhdimount_opens_child_and_parent(tmp_path: Path, qemu_img: str) -> None:
    """vhdimount (FUSE) resolves the parent from the locator and exposes both layers.

    Only the chain is checked, not the child's contents: libvhdi (<= 20240509 at least)
    reads a differencing VHDX's sector bitmap at the BAT entry's file offset even when the
    sector-bitmap block is NOT_PRESENT (offset 0), so it misreads any fresh child, including
    the ones Hyper-V makes. dissect.hypervisor (test above) reads it correctly."""
    vhdimount = shutil.which("vhdimount")
    if vhdimount is None or not os.path.exists("/dev/fuse"):
        pytest.skip("vhdimount (libvhdi-utils) or /dev/fuse is not available")
    parent = make_parent(qemu_img, tmp_path / "parent.vhdx", "64M")
    write_pattern(parent, (0x5A, 0, MiB))
    expected = _raw_of(qemu_img, parent, tmp_path / "parent.raw")
    child = tmp_path / "child.vhdx"
    native.create_vhdx_differencing(child, parent)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # Run from the child's directory with a bare name: vhdimount joins the directory of a
    # path-qualified image with the part of the parent path after its last backslash.
    proc = subprocess.run(
        [vhdimount, child.name, str(mnt)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"vhdimount cannot mount here: {proc.stderr.strip()[:300]}")
    try:
        for _ in range(50):
            if os.listdir(mnt):
                break
            time.sleep(0.1)
        assert sorted(os.listdir(mnt)) == ["vhdi1", "vhdi2"]  # parent, then child
        assert (mnt / "vhdi1").read_bytes() == expected
        assert os.stat(mnt / "vhdi2").st_size == 64 * MiB
    finally:
        if run("umount", str(mnt), check=False).returncode != 0:
            run("fusermount", "-u", str(mnt), check=False)


# -------------------------------------------------------------------------- bad input


def test_raw_parent_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(MiB))
    with pytest.raises(native.InvalidImageError, match="VHDX") as ei:
        native.create_vhdx_differencing(tmp_path / "child.vhdx", raw)
    assert isinstance(ei.value, ValueError)
    assert ei.value.filename == str(raw)  # type: ignore[attr-defined]
    assert os.listdir(tmp_path) == ["disk.raw"]


def test_qcow2_parent_is_refused(tmp_path: Path, qemu_img: str) -> None:
    q = tmp_path / "disk.qcow2"
    run(qemu_img, "create", "-q", "-f", "qcow2", str(q), "64M")
    with pytest.raises(native.InvalidImageError, match="qcow2"):
        native.create_vhdx_differencing(tmp_path / "child.vhdx", q)
    assert os.listdir(tmp_path) == ["disk.qcow2"]


def test_empty_parent_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(native.InvalidImageError):
        native.create_vhdx_differencing(tmp_path / "child.vhdx", tmp_path / "empty")
    assert os.listdir(tmp_path) == ["empty"]


def test_missing_parent(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as ei:
        native.create_vhdx_differencing(tmp_path / "child.vhdx", tmp_path / "nope.vhdx")
    assert ei.value.errno == errno.ENOENT
    assert ei.value.filename == str(tmp_path / "nope.vhdx")
    assert os.listdir(tmp_path) == []


def test_directory_parent(tmp_path: Path) -> None:
    (tmp_path / "d.vhdx").mkdir()
    with pytest.raises(IsADirectoryError):
        native.create_vhdx_differencing(tmp_path / "child.vhdx", tmp_path / "d.vhdx")
    assert os.listdir(tmp_path) == ["d.vhdx"]


def test_existing_destination(tmp_path: Path, parent: Path) -> None:
    dst = tmp_path / "child.vhdx"
    dst.write_bytes(b"precious")
    with pytest.raises(FileExistsError) as ei:
        native.create_vhdx_differencing(dst, parent)
    assert ei.value.filename == str(dst)
    assert dst.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["child.vhdx", "parent.vhdx"]
    with pytest.raises(FileExistsError):
        native.create_vhdx_differencing(parent, parent)
    assert sorted(os.listdir(tmp_path)) == ["child.vhdx", "parent.vhdx"]


def test_destination_in_missing_directory(tmp_path: Path, parent: Path) -> None:
    dst = tmp_path / "missing" / "child.vhdx"
    with pytest.raises(FileNotFoundError) as ei:
        native.create_vhdx_differencing(dst, parent)
    assert ei.value.filename == str(dst)
    assert os.listdir(tmp_path) == ["parent.vhdx"]


def _read(path: Path, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def _corrupt(path: Path, offset: int, data: bytes = b"\xff\xff\xff\xff") -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_corrupt_parent_is_refused(tmp_path: Path, parent: Path) -> None:
    _corrupt(parent, 64 * KiB + 100)
    _corrupt(parent, 128 * KiB + 100)
    with pytest.raises(native.InvalidImageError, match="header"):
        native.create_vhdx_differencing(tmp_path / "child.vhdx", parent)
    assert os.listdir(tmp_path) == ["parent.vhdx"]


def _set_log_guid(path: Path) -> None:
    """Give the current header a non-zero LogGuid (an unreplayed log), keeping it valid."""
    with open(path, "r+b") as f:
        best = None
        for off in (64 * KiB, 128 * KiB):
            f.seek(off)
            raw = bytearray(f.read(4 * KiB))
            h = parse_header(bytes(raw))
            if h["valid"] and (best is None or h["seq"] > best[1]["seq"]):
                best = (off, h, raw)
        assert best is not None
        off, _, raw = best
        raw[48:64] = uuid.uuid4().bytes_le
        raw[4:8] = b"\0\0\0\0"
        struct.pack_into("<I", raw, 4, crc32c(bytes(raw)))
        f.seek(off)
        f.write(raw)


def test_parent_with_pending_log_is_refused(tmp_path: Path, parent: Path) -> None:
    _set_log_guid(parent)
    assert current_header(parent)["log_guid"] != uuid.UUID(int=0)
    with pytest.raises(native.InvalidImageError, match="log"):
        native.create_vhdx_differencing(tmp_path / "child.vhdx", parent)
    assert os.listdir(tmp_path) == ["parent.vhdx"]


# ----------------------------------------------- the native reader (native.image_info)


def test_image_info_parent(parent: Path, qemu_img: str) -> None:
    info = native.image_info(parent, chain=False)
    assert info.format == "vhdx"
    assert info.virtual_size == 64 * MiB
    assert info.cluster_size == parse_vhdx(parent)["block_size"]
    assert info.backing_file is None and info.backing_path is None and info.backing_format is None
    assert info.actual_size == os.stat(parent).st_blocks * 512


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_image_info_child(tmp_path: Path, qemu_img: str, subformat: str) -> None:
    parent = make_parent(
        qemu_img, tmp_path / "parent.vhdx", "96M", f"subformat={subformat}", "block_size=2M"
    )
    child = tmp_path / "child.vhdx"
    native.create_vhdx_differencing(child, parent)
    info = native.image_info(child, chain=False)
    assert info.format == "vhdx"
    assert info.virtual_size == 96 * MiB
    assert info.cluster_size == 2 * MiB
    assert info.backing_file == ".\\parent.vhdx"
    assert info.backing_path is not None and os.path.samefile(info.backing_path, parent)
    assert info.backing_format == "vhdx"


def test_image_info_chain(tmp_path: Path, parent: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    c1, c2 = tmp_path / "c1.vhdx", sub / "c2.vhdx"
    native.create_vhdx_differencing(c1, parent)
    native.create_vhdx_differencing(c2, c1)
    info = native.image_info(c2)
    assert info.backing_file == "..\\c1.vhdx"
    assert [i.format for i in info.backing_chain] == ["vhdx", "vhdx"]
    assert os.path.samefile(info.backing_chain[0].path, c1)
    assert os.path.samefile(info.backing_chain[1].path, parent)
    assert info.backing_chain[1].backing_file is None
    assert native.detect_format(c2) == "vhdx"


def test_image_info_falls_back_to_absolute_path(tmp_path: Path, parent: Path) -> None:
    """When the relative path no longer leads to the parent (child moved alone), the
    absolute path recorded by a POSIX writer is used."""
    child = tmp_path / "child.vhdx"
    native.create_vhdx_differencing(child, parent)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / "child.vhdx"
    child.rename(moved)
    info = native.image_info(moved, chain=False)
    assert info.backing_file == ".\\parent.vhdx"
    assert info.backing_path is not None and os.path.samefile(info.backing_path, parent)


def test_image_info_uses_second_header_and_region_table(tmp_path: Path, parent: Path) -> None:
    child = tmp_path / "child.vhdx"
    native.create_vhdx_differencing(child, parent)
    _corrupt(child, 64 * KiB + 200)  # header 1 checksum now wrong
    _corrupt(child, 192 * KiB + 2000)  # region table 1 checksum now wrong
    info = native.image_info(child, chain=False)
    assert info.virtual_size == 64 * MiB and info.backing_file == ".\\parent.vhdx"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("headers", "header"),
        ("region_tables", "region table"),
        ("metadata_signature", "metadata"),
        ("truncated", "truncated"),
        ("required_item", "unsupported required metadata item"),
        ("block_size", "block size"),
        ("no_locator", "parent locator"),
    ],
)
def test_image_info_invalid(tmp_path: Path, parent: Path, damage: str, message: str) -> None:
    child = tmp_path / "child.vhdx"
    native.create_vhdx_differencing(child, parent)
    c = parse_vhdx(child)
    meta_off = c["region_tables"][0]["entries"][METADATA_REGION][0]
    if damage == "headers":
        _corrupt(child, 64 * KiB + 8)
        _corrupt(child, 128 * KiB + 8)
    elif damage == "region_tables":
        _corrupt(child, 192 * KiB + 1000)
        _corrupt(child, 256 * KiB + 1000)
    elif damage == "metadata_signature":
        _corrupt(child, meta_off, b"METADATA")
    elif damage == "truncated":
        os.truncate(child, 200 * KiB)
    elif damage == "required_item":
        _corrupt(child, meta_off + 32, uuid.uuid4().bytes_le)  # unknown item id, IsRequired set
    elif damage == "block_size":
        assert guid(_read(child, meta_off + 32, 16)) == FILE_PARAMETERS
        fp_off = struct.unpack("<I", _read(child, meta_off + 48, 4))[0]
        _corrupt(child, meta_off + fp_off, struct.pack("<I", 3 * MiB))
    elif damage == "no_locator":
        with open(child, "r+b") as f:
            f.seek(meta_off + 10)
            (count,) = struct.unpack("<H", f.read(2))
            f.seek(meta_off + 10)
            f.write(struct.pack("<H", count - 1))  # the locator is the last entry
    with pytest.raises(native.InvalidImageError, match=message) as ei:
        native.image_info(child, chain=False)
    assert ei.value.filename == str(child)  # type: ignore[attr-defined]
