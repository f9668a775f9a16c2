"""qcow2 overlays and qcow2 -> raw conversion, checked against the real QEMU tools."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent_swarm import native

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-img") and shutil.which("qemu-io")), reason="needs qemu-img and qemu-io"
)

MiB = 1 << 20


# ---- helpers -----------------------------------------------------------------------------


def run(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(a) for a in args], check=check, capture_output=True, text=True)


def qemu_img(*args: str | os.PathLike[str]) -> str:
    return run("qemu-img", *args).stdout


def qemu_io(fmt: str, path: Path, *cmds: str) -> None:
    args: list[str] = []
    for c in cmds:
        args += ["-c", c]
    run("qemu-io", "-f", fmt, *args, path)


def make_qcow2(
    path: Path,
    size: int,
    *writes: str,
    opts: str = "",
    backing: Path | None = None,
    backing_fmt: str | None = None,
) -> Path:
    args = ["create", "-q", "-f", "qcow2"]
    if opts:
        args += ["-o", opts]
    if backing is not None:
        args += ["-b", os.fspath(backing), "-F", backing_fmt or "qcow2"]
    qemu_img(*args, path, str(size))
    if writes:
        qemu_io("qcow2", path, *writes)
    return path


def make_raw(path: Path, size: int, *writes: str) -> Path:
    qemu_img("create", "-q", "-f", "raw", path, str(size))
    if writes:
        qemu_io("raw", path, *writes)
    return path


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def qemu_raw(src: Path, dst: Path) -> Path:
    """The guest-visible content of `src` according to QEMU."""
    qemu_img("convert", "-O", "raw", src, dst)
    return dst


def check_clean(path: Path) -> None:
    r = run("qemu-img", "check", path, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No errors were found" in r.stdout


def chain_json(path: Path) -> list[dict[str, object]]:
    out = json.loads(qemu_img("info", "--backing-chain", "--output=json", path))
    assert isinstance(out, list)
    return out


def assert_nothing_left(d: Path, before: set[str]) -> None:
    assert set(os.listdir(d)) == before


# ---- create_qcow2_overlay: valid images -----------------------------------------------------


@pytest.mark.parametrize("backing_fmt", ["raw", "qcow2"])
def test_overlay_is_byte_identical_to_qemu_img_create(tmp_path: Path, backing_fmt: str) -> None:
    if backing_fmt == "raw":
        make_raw(tmp_path / "base.img", 3 * 1024 * MiB + 512)
    else:
        make_qcow2(tmp_path / "base.img", 3 * 1024 * MiB + 512)
    ref = tmp_path / "ref.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.img", "-F", backing_fmt, ref)
    # Relative name: resolved against the overlay's directory, not the cwd.
    native.create_qcow2_overlay(tmp_path / "ours.qcow2", "base.img")
    assert (tmp_path / "ours.qcow2").read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("backing_fmt", ["raw", "qcow2"])
def test_overlay_reads_through_and_writes_stay_in_overlay(tmp_path: Path, backing_fmt: str) -> None:
    size = 64 * MiB
    writes = ("write -P 0xab 0 1M", "write -P 0x5a 5M 300k", f"write -P 0x77 {size - 4096} 4096")
    if backing_fmt == "raw":
        base = make_raw(tmp_path / "base.raw", size, *writes)
    else:
        base = make_qcow2(tmp_path / "base.qcow2", size, *writes)
    base_sum = sha(base)
    base_content = qemu_raw(base, tmp_path / "base-content.raw")

    top = tmp_path / "top.qcow2"
    native.create_qcow2_overlay(top, base)
    check_clean(top)

    chain = chain_json(top)
    assert len(chain) == 2
    assert chain[0]["format"] == "qcow2"
    assert chain[0]["virtual-size"] == size
    assert chain[0]["backing-filename"] == str(base)
    assert chain[0]["backing-filename-format"] == backing_fmt
    assert chain[1]["filename"] == str(base)
    assert chain[1]["format"] == backing_fmt

    # Reads go through to the backing file.
    assert sha(qemu_raw(top, tmp_path / "top1.raw")) == sha(base_content)

    # Writes land in the overlay only.
    qemu_io("qcow2", top, "write -P 0xcd 512k 64k", "write -P 0xcd 40M 1M")
    check_clean(top)
    assert sha(base) == base_sum
    got = qemu_raw(top, tmp_path / "top2.raw").read_bytes()
    want = bytearray(base_content.read_bytes())
    want[512 * 1024 : 576 * 1024] = b"\xcd" * (64 * 1024)
    want[40 * MiB : 41 * MiB] = b"\xcd" * MiB
    assert got == bytes(want)


def test_relative_backing_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "vms").mkdir()
    (tmp_path / "elsewhere").mkdir()
    base = make_raw(tmp_path / "images" / "base.raw", 8 * MiB, "write -P 0xab 0 1M")
    monkeypatch.chdir(tmp_path / "elsewhere")  # must not matter
    top = tmp_path / "vms" / "top.qcow2"
    native.create_qcow2_overlay(top, "../images/base.raw")
    check_clean(top)
    chain = chain_json(top)
    assert chain[0]["backing-filename"] == "../images/base.raw"
    assert os.path.samefile(str(chain[1]["filename"]), base)
    assert qemu_raw(top, tmp_path / "out.raw").read_bytes() == base.read_bytes()

    info = native.image_info(top)
    assert info.backing_file == "../images/base.raw"
    assert info.backing_path is not None and os.path.samefile(info.backing_path, base)
    assert info.backing_chain[0].format == "raw"

    # A bare relative overlay path works too (directory ".").
    monkeypatch.chdir(tmp_path / "images")
    native.create_qcow2_overlay("top2.qcow2", "base.raw")
    assert chain_json(tmp_path / "images" / "top2.qcow2")[0]["backing-filename"] == "base.raw"


@pytest.mark.parametrize("backing_fmt", ["raw", "qcow2"])
def test_explicit_size_larger_than_backing(tmp_path: Path, backing_fmt: str) -> None:
    if backing_fmt == "raw":
        base = make_raw(tmp_path / "base", 4 * MiB, "write -P 0xab 0 4M")
    else:
        base = make_qcow2(tmp_path / "base", 4 * MiB, "write -P 0xab 0 4M")
    top = tmp_path / "top.qcow2"
    native.create_qcow2_overlay(top, base, backing_format=backing_fmt, size=1024 * MiB)
    check_clean(top)
    chain = chain_json(top)
    assert chain[0]["virtual-size"] == 1024 * MiB
    assert chain[0]["backing-filename-format"] == backing_fmt
    out = qemu_raw(top, tmp_path / "out.raw")
    with open(out, "rb") as f:
        assert f.read(4 * MiB) == b"\xab" * (4 * MiB)
        assert f.read(4 * MiB) == bytes(4 * MiB)
    assert out.stat().st_size == 1024 * MiB
    # The same size as the backing is fine too.
    native.create_qcow2_overlay(tmp_path / "same.qcow2", base, size=4 * MiB)
    check_clean(tmp_path / "same.qcow2")


def test_large_virtual_size_l1_spans_clusters(tmp_path: Path) -> None:
    base = make_raw(tmp_path / "base.raw", MiB)
    top = tmp_path / "top.qcow2"
    size = 5 * (1 << 40)  # 5 TiB: 10240 L1 entries = 80 KiB, two clusters
    native.create_qcow2_overlay(top, base, size=size)
    check_clean(top)
    assert chain_json(top)[0]["virtual-size"] == size
    ref = tmp_path / "ref.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", ref, str(size))
    assert top.read_bytes() == ref.read_bytes()


def test_overlay_of_overlay(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", 16 * MiB, "write -P 0x01 0 2M")
    mid = tmp_path / "mid.qcow2"
    native.create_qcow2_overlay(mid, base)
    qemu_io("qcow2", mid, "write -P 0x02 1M 2M")
    top = tmp_path / "top.qcow2"
    native.create_qcow2_overlay(top, mid)
    check_clean(top)
    assert [c["filename"] for c in chain_json(top)] == [str(top), str(mid), str(base)]
    data = qemu_raw(top, tmp_path / "out.raw").read_bytes()
    assert data[:MiB] == b"\x01" * MiB and data[MiB : 3 * MiB] == b"\x02" * (2 * MiB)


# ---- create_qcow2_overlay: bad input leaves nothing behind ---------------------------------


def test_missing_backing(tmp_path: Path) -> None:
    before = set(os.listdir(tmp_path))
    with pytest.raises(FileNotFoundError) as ei:
        native.create_qcow2_overlay(tmp_path / "top.qcow2", "nope.raw")
    assert ei.value.filename == str(tmp_path / "nope.raw")
    assert_nothing_left(tmp_path, before)


def test_backing_with_broken_chain(tmp_path: Path) -> None:
    base = make_raw(tmp_path / "base.raw", MiB)
    mid = make_qcow2(tmp_path / "mid.qcow2", MiB, backing=base, backing_fmt="raw")
    base.unlink()
    before = set(os.listdir(tmp_path))
    with pytest.raises(FileNotFoundError) as ei:
        native.create_qcow2_overlay(tmp_path / "top.qcow2", mid)
    assert ei.value.filename == str(base)
    assert_nothing_left(tmp_path, before)


def test_existing_destination(tmp_path: Path) -> None:
    base = make_raw(tmp_path / "base.raw", MiB)
    top = tmp_path / "top.qcow2"
    top.write_bytes(b"keep me")
    before = set(os.listdir(tmp_path))
    with pytest.raises(FileExistsError) as ei:
        native.create_qcow2_overlay(top, base)
    assert ei.value.filename == str(top)
    assert top.read_bytes() == b"keep me"
    assert_nothing_left(tmp_path, before)


def test_directory_as_backing(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    before = set(os.listdir(tmp_path))
    with pytest.raises(IsADirectoryError) as ei:
        native.create_qcow2_overlay(tmp_path / "top.qcow2", tmp_path / "adir")
    assert ei.value.filename == str(tmp_path / "adir")
    assert_nothing_left(tmp_path, before)


def test_truncated_qcow2_backing(tmp_path: Path) -> None:
    real = make_qcow2(tmp_path / "real.qcow2", 16 * MiB)
    trunc = tmp_path / "trunc.qcow2"
    trunc.write_bytes(real.read_bytes()[:50])
    before = set(os.listdir(tmp_path))
    with pytest.raises(native.InvalidImageError, match="truncated") as ei:
        native.create_qcow2_overlay(tmp_path / "top.qcow2", trunc)
    assert isinstance(ei.value, ValueError)
    assert ei.value.filename == str(trunc)  # type: ignore[attr-defined]
    assert_nothing_left(tmp_path, before)


def test_random_bytes_as_qcow2_backing(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(MiB))
    before = set(os.listdir(tmp_path))
    with pytest.raises(native.InvalidImageError, match="not qcow2"):
        native.create_qcow2_overlay(tmp_path / "top.qcow2", junk, backing_format="qcow2")
    assert_nothing_left(tmp_path, before)


def test_random_777_bytes_backing(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(777))
    before = set(os.listdir(tmp_path))
    with pytest.raises(native.InvalidImageError, match="does not look like a disk image"):
        native.create_qcow2_overlay(tmp_path / "top.qcow2", junk)
    assert_nothing_left(tmp_path, before)


def test_backing_format_mismatch(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", MiB)
    before = set(os.listdir(tmp_path))
    with pytest.raises(native.InvalidImageError, match="qcow2 image, not raw"):
        native.create_qcow2_overlay(tmp_path / "top.qcow2", base, backing_format="raw")
    assert_nothing_left(tmp_path, before)


def test_unsupported_backing_formats(tmp_path: Path) -> None:
    vmdk = tmp_path / "b.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", vmdk, "1M")
    vhdx = tmp_path / "b.vhdx"
    qemu_img("create", "-q", "-f", "vhdx", vhdx, "8M")
    before = set(os.listdir(tmp_path))
    with pytest.raises(native.InvalidImageError, match="unsupported image format VMDK"):
        native.create_qcow2_overlay(tmp_path / "top.qcow2", vmdk)
    with pytest.raises(ValueError, match="VHDX") as ei:
        native.create_qcow2_overlay(tmp_path / "top.qcow2", vhdx)
    assert not isinstance(ei.value, native.InvalidImageError)
    assert_nothing_left(tmp_path, before)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 512 * 1024}, "smaller than the backing"),
        ({"size": 4 * MiB + 1}, "multiple of 512"),
        ({"size": 0}, "positive"),
        ({"size": -512}, "positive"),
        ({"size": 1 << 62}, "too large"),
        ({"backing_format": "vmdk"}, "backing_format"),
        ({"backing_format": "vhdx"}, "VHDX"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    base = make_raw(tmp_path / "base.raw", MiB)
    before = set(os.listdir(tmp_path))
    with pytest.raises(ValueError, match=match) as ei:
        native.create_qcow2_overlay(tmp_path / "top.qcow2", base, **kwargs)  # type: ignore[arg-type]
    assert not isinstance(ei.value, native.InvalidImageError)
    assert_nothing_left(tmp_path, before)


# Permission failures cannot be provoked as root (it bypasses file modes), so those run in a
# subprocess as `nobody`.
_AS_NOBODY = r"""
import os, sys
from agent_swarm import native
try:
    native.create_qcow2_overlay(sys.argv[1], sys.argv[2])
except OSError as e:
    print(type(e).__name__, e.errno, e.filename)
else:
    print("no error")
"""


def _run_as_nobody(*args: str) -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the nobody user")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not available")
    r = subprocess.run(
        [
            setpriv,
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-c",
            _AS_NOBODY,
            *args,
        ],
        capture_output=True,
        text=True,
        cwd="/",
    )
    if r.returncode != 0:
        pytest.skip(f"cannot run the package as nobody: {r.stderr.strip()[-300:]}")
    return r.stdout.strip()


@pytest.fixture
def world_dir() -> object:
    # tmp_path is not traversable by other users; use a fresh world-accessible directory.
    d = Path(tempfile.mkdtemp(prefix="agent-swarm-test-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d)


def test_unreadable_backing(world_dir: Path) -> None:
    base = make_raw(world_dir / "base.raw", MiB)
    base.chmod(0o000)
    before = set(os.listdir(world_dir))
    out = _run_as_nobody(str(world_dir / "top.qcow2"), str(base))
    assert out == f"PermissionError 13 {base}"
    assert_nothing_left(world_dir, before)


def test_unwritable_destination_directory(world_dir: Path) -> None:
    base = make_raw(world_dir / "base.raw", MiB)
    ro = world_dir / "ro"
    ro.mkdir(mode=0o755)
    out = _run_as_nobody(str(ro / "top.qcow2"), str(base))
    assert out == f"PermissionError 13 {ro / 'top.qcow2'}"
    assert os.listdir(ro) == []


# ---- convert_qcow2_to_raw ------------------------------------------------------------------


def assert_same_as_qemu(src: Path, tmp_path: Path, *, sparse: bool = True) -> bytes:
    ours = tmp_path / "ours.raw"
    native.convert_qcow2_to_raw(src, ours)
    ref = qemu_raw(src, tmp_path / "ref.raw")
    data = ours.read_bytes()
    assert ours.stat().st_size == ref.stat().st_size
    assert data == ref.read_bytes()
    if sparse:
        st = ours.stat()
        nonzero = len(data) - data.count(0)
        # Only (roughly) the non-zero data is allocated.
        assert st.st_blocks * 512 <= nonzero + st.st_size // 16 + 1 * MiB, (st.st_blocks, nonzero)
    ours.unlink()
    ref.unlink()
    return data


@pytest.mark.parametrize("cluster_size", [512, 4096, 65536, 2 * MiB])
def test_convert_matches_qemu(tmp_path: Path, cluster_size: int) -> None:
    src = make_qcow2(
        tmp_path / "src.qcow2",
        96 * MiB + 1536,
        "write -P 0xab 0 1M",
        "write -P 0x01 3000 5000",
        "write -P 0x00 8M 1M",  # allocated but zero
        "write -P 0x42 33M 5M",
        f"write -P 0x99 {96 * MiB} 1536",  # the unaligned tail
        opts=f"cluster_size={cluster_size}",
    )
    data = assert_same_as_qemu(src, tmp_path)
    assert len(data) == 96 * MiB + 1536
    assert data[96 * MiB :] == b"\x99" * 1536


def test_convert_is_sparse(tmp_path: Path) -> None:
    src = make_qcow2(tmp_path / "src.qcow2", 1024 * MiB, "write -P 0x11 100M 64k")
    out = tmp_path / "out.raw"
    native.convert_qcow2_to_raw(src, out)
    st = out.stat()
    assert st.st_size == 1024 * MiB
    assert st.st_blocks * 512 < 4 * MiB
    with open(out, "rb") as f:
        f.seek(100 * MiB)
        assert f.read(64 * 1024) == b"\x11" * 65536


def test_convert_v2_image(tmp_path: Path) -> None:
    src = make_qcow2(tmp_path / "v2.qcow2", 32 * MiB, "write -P 0x33 1M 3M", opts="compat=0.10")
    assert (
        json.loads(qemu_img("info", "--output=json", src))["format-specific"]["data"]["compat"]
        == "0.10"
    )
    data = assert_same_as_qemu(src, tmp_path)
    assert data == bytes(MiB) + b"\x33" * (3 * MiB) + bytes(28 * MiB)


@pytest.mark.parametrize("cluster_size", [4096, 65536, 2 * MiB])
def test_convert_compressed(tmp_path: Path, cluster_size: int) -> None:
    raw = tmp_path / "content.raw"
    with open(raw, "wb") as f:
        f.truncate(48 * MiB)
        f.write(b"hello world, compress me! " * 100_000)  # compressible
        f.seek(10 * MiB)
        f.write(os.urandom(3 * MiB + 4096))  # incompressible: stored uncompressed
        f.seek(20 * MiB)
        f.write(bytes(range(256)) * 8192)
        f.seek(48 * MiB - 700)
        f.write(b"\x07" * 700)
    comp = tmp_path / "comp.qcow2"
    qemu_img(
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        f"cluster_size={cluster_size}",
        raw,
        comp,
    )
    # Some clusters are really compressed.
    assert comp.stat().st_size < 30 * MiB
    data = assert_same_as_qemu(comp, tmp_path)
    assert data == raw.read_bytes()


def test_convert_compressed_in_backing_of_smaller_clusters(tmp_path: Path) -> None:
    # A compressed 2 MiB cluster below a 4 KiB-cluster overlay is read piecewise.
    raw = make_raw(tmp_path / "c.raw", 8 * MiB, "write -P 0x5c 0 8M")
    base = tmp_path / "base.qcow2"
    qemu_img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=2M", raw, base)
    assert json.loads(qemu_img("check", "--output=json", base)).get("compressed-clusters") == 4
    top = make_qcow2(
        tmp_path / "top.qcow2",
        8 * MiB,
        "write -P 0x11 1M 4k",
        "write -z 3M 8k",
        opts="cluster_size=4096",
        backing=base,
    )
    data = assert_same_as_qemu(top, tmp_path)
    expected = bytearray(b"\x5c" * (8 * MiB))
    expected[MiB : MiB + 4096] = b"\x11" * 4096
    expected[3 * MiB : 3 * MiB + 8192] = bytes(8192)
    assert data == expected


def test_convert_zero_clusters(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", 16 * MiB, "write -P 0xab 0 16M")
    top = make_qcow2(
        tmp_path / "top.qcow2", 16 * MiB, "write -z 1M 2M", "write -P 0xcd 4M 64k", backing=base
    )
    # QEMU really wrote zero-flagged clusters (not data) in the overlay.
    mapping = json.loads(qemu_img("map", "--output=json", top))
    assert any(m["zero"] and m["depth"] == 0 and m["start"] == MiB for m in mapping)
    data = assert_same_as_qemu(top, tmp_path, sparse=False)
    assert data[MiB : 3 * MiB] == bytes(2 * MiB)
    assert data[:MiB] == b"\xab" * MiB
    # Zeroing allocated clusters in a standalone image.
    solo = make_qcow2(tmp_path / "solo.qcow2", 8 * MiB, "write -P 0x11 0 8M", "write -z 2M 1M")
    assert_same_as_qemu(solo, tmp_path, sparse=False)


def test_convert_two_level_chain_with_short_backings(tmp_path: Path) -> None:
    base = make_raw(tmp_path / "base.raw", 8 * MiB, "write -P 0x01 0 8M")
    mid = make_qcow2(
        tmp_path / "mid.qcow2",
        24 * MiB,
        "write -P 0x02 4M 8M",
        "write -z 6M 64k",
        opts="cluster_size=4096",
        backing=base,
        backing_fmt="raw",
    )
    top = make_qcow2(
        tmp_path / "top.qcow2",
        40 * MiB,
        "write -P 0x03 7M 2M",
        "write -P 0x04 39M 1M",
        opts="cluster_size=2M",
        backing=mid,
    )
    data = assert_same_as_qemu(top, tmp_path, sparse=False)
    assert len(data) == 40 * MiB
    assert data[: 4 * MiB] == b"\x01" * (4 * MiB)
    assert data[30 * MiB : 31 * MiB] == bytes(MiB)  # beyond both backings
    # The native overlay writer's output converts too.
    ov = tmp_path / "ov.qcow2"
    native.create_qcow2_overlay(ov, top, size=64 * MiB)
    assert assert_same_as_qemu(ov, tmp_path, sparse=False)[: 40 * MiB] == data


def test_convert_raw_source(tmp_path: Path) -> None:
    src = make_raw(tmp_path / "src.raw", 16 * MiB, "write -P 0x61 1M 1M")
    out = tmp_path / "out.raw"
    native.convert_qcow2_to_raw(src, out)
    assert out.read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    "opts, match",
    [
        ("extended_l2=on", "extended L2"),
        ("data_file=DATA", "external data file"),
    ],
)
def test_convert_refuses_unsupported_features(tmp_path: Path, opts: str, match: str) -> None:
    src = tmp_path / "src.qcow2"
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        opts.replace("DATA", str(tmp_path / "d.raw")),
        src,
        "1M",
    )
    before = set(os.listdir(tmp_path))
    with pytest.raises(native.InvalidImageError, match=match):
        native.convert_qcow2_to_raw(src, tmp_path / "out.raw")
    assert_nothing_left(tmp_path, before)


def test_convert_refuses_encrypted(tmp_path: Path) -> None:
    src = tmp_path / "enc.qcow2"
    for _ in range(5):  # QEMU's PBKDF timing ("Unable to get accurate CPU usage") is flaky
        r = run(
            "qemu-img",
            "create",
            "-q",
            "--object",
            "secret,id=sec0,data=123456",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100",
            src,
            "1M",
            check=False,
        )
        if r.returncode == 0:
            break
        src.unlink(missing_ok=True)
    else:
        pytest.fail(f"qemu-img cannot create an encrypted image: {r.stderr}")
    before = set(os.listdir(tmp_path))
    with pytest.raises(native.InvalidImageError, match="encrypted"):
        native.convert_qcow2_to_raw(src, tmp_path / "out.raw")
    assert_nothing_left(tmp_path, before)


def test_convert_refuses_zstd_clusters(tmp_path: Path) -> None:
    src = tmp_path / "z.qcow2"
    r = run(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        src,
        "1M",
        check=False,
    )
    if r.returncode != 0:
        pytest.skip("this QEMU has no zstd support")
    # Without compressed clusters the compression type does not matter.
    qemu_io("qcow2", src, "write -P 0x10 0 64k")
    assert_same_as_qemu(src, tmp_path, sparse=False)
    qemu_io("qcow2", src, "write -c -P 0x11 64k 64k")
    before = set(os.listdir(tmp_path))
    with pytest.raises(native.InvalidImageError, match="zstd"):
        native.convert_qcow2_to_raw(src, tmp_path / "out.raw")
    assert_nothing_left(tmp_path, before)


def test_convert_bad_input(tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "base.qcow2", MiB)
    top = make_qcow2(tmp_path / "top.qcow2", MiB, backing=base)
    exists = tmp_path / "exists.raw"
    exists.write_bytes(b"x")
    base.rename(tmp_path / "moved.qcow2")
    before = set(os.listdir(tmp_path))
    with pytest.raises(FileNotFoundError) as ei:
        native.convert_qcow2_to_raw(top, tmp_path / "out.raw")
    assert ei.value.filename == str(base)
    with pytest.raises(FileNotFoundError):
        native.convert_qcow2_to_raw(tmp_path / "nope.qcow2", tmp_path / "out.raw")
    with pytest.raises(FileExistsError):
        native.convert_qcow2_to_raw(tmp_path / "moved.qcow2", exists)
    with pytest.raises(IsADirectoryError):
        native.convert_qcow2_to_raw(tmp_path, tmp_path / "out.raw")
    assert exists.read_bytes() == b"x"
    assert_nothing_left(tmp_path, before)


def test_convert_corrupt_compressed_cluster(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "c.raw", MiB, "write -P 0x5c 0 1M")
    comp = tmp_path / "comp.qcow2"
    qemu_img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw, comp)
    # Find the first cluster's compressed data through L1/L2 and smash it.
    data = bytearray(comp.read_bytes())
    assert int.from_bytes(data[20:24], "big") == 16  # 64 KiB clusters
    l1_offset = int.from_bytes(data[40:48], "big")
    l2_offset = int.from_bytes(data[l1_offset : l1_offset + 8], "big") & 0x00FFFFFFFFFFFE00
    entry = int.from_bytes(data[l2_offset : l2_offset + 8], "big")
    assert entry & (1 << 62)  # compressed
    coffset = entry & ((1 << 54) - 1)
    data[coffset : coffset + 64] = b"\xff" * 64
    comp.write_bytes(bytes(data))
    before = set(os.listdir(tmp_path))
    with pytest.raises(native.InvalidImageError, match="decompress"):
        native.convert_qcow2_to_raw(comp, tmp_path / "out.raw")
    assert_nothing_left(tmp_path, before)
