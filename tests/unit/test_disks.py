"""agent_swarm.disks on real files: each format's backend, checked with qemu-img/qemu-io
(and dissect.hypervisor for differencing VHDX, which qemu-img cannot read)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from agent_swarm import native
from agent_swarm.disks import FORMATS, DiskBackend, backend_for
from agent_swarm.errors import ImageError

MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img/qemu-io not installed (bash ci/test.sh installs qemu-utils)",
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)


def qemu_io(img: Path, fmt: str, cmd: str) -> None:
    run("qemu-io", "-f", fmt, "-c", cmd, str(img))


def same_content(a: Path, fa: str, b: Path, fb: str) -> bool:
    """``qemu-img compare``: equal guest content (a larger image's extra tail must be zeros)."""
    cmd = ["qemu-img", "compare", "-f", fa, "-F", fb, str(a), str(b)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode == 0


def qemu_check(img: Path, fmt: str) -> None:
    run("qemu-img", "check", "-f", fmt, str(img))


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def listing(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    """Registered base images as the core keeps them (0444): a 64 MiB qcow2 with two
    recognizable patterns, and the same disk as raw."""
    d = tmp_path / "base-images"
    d.mkdir()
    qcow2, raw = d / "deb.qcow2", d / "deb.raw"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "64M")
    qemu_io(qcow2, "qcow2", "write -P 0xab 0 1M")
    qemu_io(qcow2, "qcow2", "write -P 0xcd 40M 512k")
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(raw))
    for p in (qcow2, raw):
        os.chmod(p, 0o444)
    return {"qcow2": qcow2, "raw": raw}


def prepared(b: DiskBackend, sources: dict[str, Path], tmp_path: Path) -> Path:
    d = tmp_path / "prepared"
    d.mkdir(exist_ok=True)
    dest = d / f"deb{b.suffix}"
    b.prepare_source(sources["qcow2"], dest)
    return dest


def guest_bytes(img: Path, fmt: str, tmp_path: Path) -> bytes:
    """What the guest sees, through an independent reader."""
    if fmt == "vhdx" and native.image_info(img, chain=False).backing_path:
        vhdx = pytest.importorskip("dissect.hypervisor.disk.vhdx").VHDX(img)
        data: bytes = vhdx.read(vhdx.size)
        return data
    out = tmp_path / f"{img.name}.export.raw"
    out.unlink(missing_ok=True)
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", str(img), str(out))
    return out.read_bytes()


# ---- backend_for ----------------------------------------------------------------------------
def test_backend_for_knows_three_formats_and_refuses_others() -> None:
    assert FORMATS == ("qcow2", "raw", "vhdx")
    assert [(backend_for(f).format, backend_for(f).suffix) for f in FORMATS] == [
        ("qcow2", ".qcow2"),
        ("raw", ".img"),
        ("vhdx", ".vhdx"),
    ]
    with pytest.raises(ImageError, match=r"unknown disk format 'nope'.*qcow2, raw, vhdx"):
        backend_for("nope")


# ---- prepare_source -------------------------------------------------------------------------
@pytest.mark.parametrize("src_kind", ["qcow2", "raw"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_prepare_source_writes_a_read_only_disk_of_the_format(
    fmt: str, src_kind: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    b = backend_for(fmt)
    d = tmp_path / "prepared"
    d.mkdir()
    dest = d / f"deb{b.suffix}"
    seen: list[str] = []
    b.prepare_source(sources[src_kind], dest, progress=seen.append)

    assert listing(d) == {dest.name}  # no temporary file left
    assert mode(dest) == 0o444
    assert seen
    b.check(dest)
    if fmt != "raw":
        info = native.image_info(dest, chain=False)
        assert (info.format, info.backing_file) == (fmt, None)
        qemu_check(dest, fmt)
    assert os.stat(dest).st_ino != os.stat(sources[src_kind]).st_ino
    assert same_content(dest, fmt, sources["qcow2"], "qcow2")


def test_prepare_source_refuses_an_existing_dest(sources: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "deb.qcow2"
    dest.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        backend_for("qcow2").prepare_source(sources["qcow2"], dest)
    assert dest.read_bytes() == b"keep"


def _corrupt_qcow2(src: Path, dest: Path) -> None:
    """A copy whose header is fine but whose first L2 table offset is unaligned: readers
    fail only once they reach the data."""
    shutil.copyfile(src, dest)
    with open(dest, "r+b") as f:
        l1 = struct.unpack(">Q", f.read(48)[40:48])[0]
        f.seek(l1)
        (entry,) = struct.unpack(">Q", f.read(8))
        f.seek(l1)
        f.write(struct.pack(">Q", entry | 0x200))


@pytest.mark.parametrize("fmt", FORMATS)
def test_prepare_source_leaves_nothing_behind_on_failure(
    fmt: str, sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = backend_for(fmt)
    d = tmp_path / "prepared"
    d.mkdir()
    bad = tmp_path / "bad.qcow2"
    _corrupt_qcow2(sources["qcow2"], bad)
    if fmt == "qcow2":
        # A qcow2 source is only cloned: simulate the file system filling up mid-copy.
        def full(src: object, dst: object) -> str:
            Path(str(dst)).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))

        monkeypatch.setattr(native, "clone_file", full)
        with pytest.raises(OSError, match="No space"):
            b.prepare_source(sources["qcow2"], d / "deb.qcow2")
    elif fmt == "raw":
        with pytest.raises(ValueError, match="not cluster-aligned"):  # native.InvalidImageError
            b.prepare_source(bad, d / "deb.img")
    else:  # qemu-img fails after it created its output file
        with pytest.raises(ImageError, match=r"cannot convert .* to vhdx: .*corrupt"):
            b.prepare_source(bad, d / "deb.vhdx")
    assert listing(d) == set()


# ---- overlay --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_overlay_shows_its_parent(fmt: str, sources: dict[str, Path], tmp_path: Path) -> None:
    b = backend_for(fmt)
    parent = prepared(b, sources, tmp_path)
    disk = tmp_path / f"disk{b.suffix}"
    b.overlay(disk, parent)

    assert mode(disk) == 0o644
    assert mode(parent) == 0o444
    assert b.parent_of(disk) == (None if fmt == "raw" else parent)
    b.check(disk)
    if fmt == "qcow2":
        qemu_check(disk, fmt)
        assert same_content(disk, fmt, parent, fmt)
    assert guest_bytes(disk, fmt, tmp_path) == guest_bytes(sources["qcow2"], "qcow2", tmp_path)


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_overlay_grows_to_size(fmt: str, sources: dict[str, Path], tmp_path: Path) -> None:
    b = backend_for(fmt)
    parent = prepared(b, sources, tmp_path)
    disk = tmp_path / f"disk{b.suffix}"
    b.overlay(disk, parent, size=128 * MiB)
    assert native.image_info(disk, chain=False).virtual_size == 128 * MiB
    assert native.image_info(parent, chain=False).virtual_size == 64 * MiB
    assert same_content(disk, fmt, parent, fmt)  # the new tail reads as zeros


@pytest.mark.parametrize("fmt", FORMATS)
def test_overlay_never_shrinks(fmt: str, sources: dict[str, Path], tmp_path: Path) -> None:
    b = backend_for(fmt)
    parent = prepared(b, sources, tmp_path)
    disk = tmp_path / f"disk{b.suffix}"
    with pytest.raises(ValueError, match="smaller"):
        b.overlay(disk, parent, size=32 * MiB)
    assert not disk.exists()


def test_vhdx_overlay_cannot_grow(sources: dict[str, Path], tmp_path: Path) -> None:
    b = backend_for("vhdx")
    parent = prepared(b, sources, tmp_path)
    disk = tmp_path / "disk.vhdx"
    with pytest.raises(ValueError, match="cannot be grown"):
        b.overlay(disk, parent, size=128 * MiB)
    assert not disk.exists()
    b.overlay(disk, parent, size=64 * MiB)  # its own size is fine
    assert native.image_info(disk, chain=False).virtual_size == 64 * MiB


@pytest.mark.parametrize("fmt", FORMATS)
def test_overlay_refuses_an_existing_path(
    fmt: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    b = backend_for(fmt)
    parent = prepared(b, sources, tmp_path)
    disk = tmp_path / f"disk{b.suffix}"
    disk.write_bytes(b"a VM's disk")
    with pytest.raises(FileExistsError):
        b.overlay(disk, parent)
    assert disk.read_bytes() == b"a VM's disk"


# ---- seal / unseal --------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_seal_and_unseal(fmt: str, sources: dict[str, Path], tmp_path: Path) -> None:
    b = backend_for(fmt)
    parent = prepared(b, sources, tmp_path)
    disk, gen = tmp_path / f"disk{b.suffix}", tmp_path / f"gen-1{b.suffix}"
    b.overlay(disk, parent)
    ino = os.stat(disk).st_ino

    b.seal(disk, gen)
    assert not disk.exists()
    assert (mode(gen), os.stat(gen).st_ino) == (0o444, ino)

    b.unseal(gen, disk)
    assert not gen.exists()
    assert (mode(disk), os.stat(disk).st_ino) == (0o644, ino)


# ---- detach_parent --------------------------------------------------------------------------
def _qcow2_generations(sources: dict[str, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    """base <- gen-1 <- gen-2, each generation writing over the one below."""
    b = backend_for("qcow2")
    base = prepared(b, sources, tmp_path)
    p = tmp_path / "project"
    p.mkdir()
    gens: list[Path] = []
    for n, cmd in ((1, "write -P 0x11 8M 4M"), (2, "write -P 0x22 10M 4M")):
        disk = p / "disk.qcow2"
        b.overlay(disk, gens[-1] if gens else base)
        qemu_io(disk, "qcow2", cmd)
        qemu_io(disk, "qcow2", "write -z 0 64k")  # a zero cluster over the base's 0xab
        gens.append(p / f"gen-{n}.qcow2")
        b.seal(disk, gens[-1])
    return base, gens[0], gens[1]


def test_qcow2_detach_parent_keeps_content_and_the_old_inode(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    b = backend_for("qcow2")
    base, gen1, gen2 = _qcow2_generations(sources, tmp_path)
    before = guest_bytes(gen2, "qcow2", tmp_path)
    assert b.parent_of(gen2) == gen1
    old_bytes = gen2.read_bytes()
    seen: list[str] = []
    with open(gen2, "rb") as held:  # a VM running on the old file
        b.detach_parent(gen2, base, progress=seen.append)
        assert os.fstat(held.fileno()).st_ino != os.stat(gen2).st_ino
        assert held.read() == old_bytes

    assert b.parent_of(gen2) == base
    assert mode(gen2) == 0o444
    assert listing(gen2.parent) == {"gen-1.qcow2", "gen-2.qcow2"}  # no .detach.tmp left
    assert seen
    qemu_check(gen2, "qcow2")
    gen1.unlink()  # what gc does next: gen-2 no longer needs it
    assert guest_bytes(gen2, "qcow2", tmp_path) == before

    b.detach_parent(gen2, None)  # and standalone
    assert b.parent_of(gen2) is None
    assert guest_bytes(gen2, "qcow2", tmp_path) == before


def test_qcow2_detach_parent_takes_a_relative_parent_as_python_does(
    sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """qemu-img would resolve a relative -b against the image's directory."""
    b = backend_for("qcow2")
    base, _gen1, gen2 = _qcow2_generations(sources, tmp_path)
    before = guest_bytes(gen2, "qcow2", tmp_path)
    monkeypatch.chdir(tmp_path)
    b.detach_parent(gen2, base.relative_to(tmp_path))
    assert b.parent_of(gen2) == base
    assert guest_bytes(gen2, "qcow2", tmp_path) == before


def test_qcow2_detach_parent_failure_changes_nothing(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    b = backend_for("qcow2")
    _base, gen1, gen2 = _qcow2_generations(sources, tmp_path)
    old_bytes, ino = gen2.read_bytes(), os.stat(gen2).st_ino
    bad = tmp_path / "bad.qcow2"
    _corrupt_qcow2(sources["qcow2"], bad)
    with pytest.raises(ImageError, match=r"cannot rewrite .*gen-2.qcow2 onto .*bad.qcow2: "):
        b.detach_parent(gen2, bad)  # qemu-img fails reading the new parent
    with pytest.raises(FileNotFoundError):  # native errors propagate
        b.detach_parent(gen2, tmp_path / "missing.qcow2")
    assert (gen2.read_bytes(), os.stat(gen2).st_ino, mode(gen2)) == (old_bytes, ino, 0o444)
    assert b.parent_of(gen2) == gen1
    assert listing(gen2.parent) == {"gen-1.qcow2", "gen-2.qcow2"}


def test_raw_detach_parent_is_a_no_op(sources: dict[str, Path], tmp_path: Path) -> None:
    b = backend_for("raw")
    disk, gen = tmp_path / "disk.img", tmp_path / "gen-1.img"
    b.overlay(disk, prepared(b, sources, tmp_path))
    b.seal(disk, gen)
    before = (gen.read_bytes(), os.stat(gen).st_ino)
    b.detach_parent(gen, None)
    b.detach_parent(gen, tmp_path / "whatever.img")
    assert (gen.read_bytes(), os.stat(gen).st_ino) == before


def test_vhdx_chains_are_not_rewritten(sources: dict[str, Path], tmp_path: Path) -> None:
    b = backend_for("vhdx")
    base = prepared(b, sources, tmp_path)
    disk, gen = tmp_path / "disk.vhdx", tmp_path / "gen-1.vhdx"
    b.overlay(disk, base)
    b.seal(disk, gen)
    for new_parent in (None, base):
        with pytest.raises(ImageError, match="VHDX chains are not rewritten"):
            b.detach_parent(gen, new_parent)
    assert b.parent_of(gen) == base
    b.detach_parent(base, None)  # standalone already: nothing to do


# ---- untouched, actual_size, check ----------------------------------------------------------
def test_qcow2_untouched_until_the_guest_writes(sources: dict[str, Path], tmp_path: Path) -> None:
    b = backend_for("qcow2")
    disk = tmp_path / "disk.qcow2"
    b.overlay(disk, prepared(b, sources, tmp_path), size=128 * MiB)
    assert b.untouched(disk)
    qemu_io(disk, "qcow2", "read 0 1M")  # opened read-write and read: still untouched
    assert b.untouched(disk)
    # Small: on ext4 the file stays under the 4 clusters of today's size rule.
    qemu_io(disk, "qcow2", "write -P 0x01 20M 4k")
    assert not b.untouched(disk)
    other = tmp_path / "other.qcow2"
    b.overlay(other, disk)
    qemu_io(other, "qcow2", "write -P 0x02 0 8M")  # large: today's size rule alone sees it
    assert not b.untouched(other)


@pytest.mark.parametrize("fmt", ["raw", "vhdx"])
def test_other_formats_are_never_untouched(
    fmt: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    b = backend_for(fmt)
    disk = tmp_path / f"disk{b.suffix}"
    b.overlay(disk, prepared(b, sources, tmp_path))
    assert not b.untouched(disk)  # conservative: the core boots it once more


@pytest.mark.parametrize("fmt", FORMATS)
def test_actual_size(fmt: str, sources: dict[str, Path], tmp_path: Path) -> None:
    b = backend_for(fmt)
    parent = prepared(b, sources, tmp_path)
    size = b.actual_size(parent)
    assert size is not None and 0 < size < 64 * MiB  # sparse: 1.5 MiB written
    assert b.actual_size(tmp_path / "missing") is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_check_refuses_other_formats_and_broken_files(
    fmt: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    b = backend_for(fmt)
    with pytest.raises(ImageError, match="cannot read the disk") as ei:
        b.check(tmp_path / "missing")
    assert "\n" not in str(ei.value)
    odd = tmp_path / "odd"
    odd.write_bytes(b"x" * 1000)
    with pytest.raises(ImageError):
        b.check(odd)
    if fmt != "raw":
        other = prepared(backend_for("vhdx" if fmt == "qcow2" else "qcow2"), sources, tmp_path)
        with pytest.raises(ImageError, match=f"not {fmt}"):
            b.check(other)
        truncated = tmp_path / f"t{b.suffix}"
        shutil.copyfile(prepared(b, sources, tmp_path), truncated)
        os.truncate(truncated, 4096)
        with pytest.raises(ImageError, match=r"truncated|invalid") as ei:
            b.check(truncated)
        assert "\n" not in str(ei.value)


def test_raw_disks_are_judged_by_size_never_by_their_bytes(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    """Every byte of a raw disk is the guest's: a qcow2 header the guest wrote to its first
    sector (naming a host file as backing) must not make it a qcow2 image with a parent."""
    b = backend_for("raw")
    disk = tmp_path / "disk.img"
    b.overlay(disk, prepared(b, sources, tmp_path))
    evil = tmp_path / "evil.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(evil))
    with open(disk, "r+b") as f:
        f.write(evil.read_bytes()[:4096])
    assert native.detect_format(disk) == "qcow2"  # what a naive reader would believe
    b.check(disk)
    assert b.parent_of(disk) is None


def test_a_missing_qemu_img_is_an_image_error(
    sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ImageError, match="qemu-img is not installed") as ei:
        backend_for("vhdx").prepare_source(sources["qcow2"], tmp_path / "deb.vhdx")
    assert ei.value.hint
    assert not (tmp_path / "deb.vhdx").exists()
