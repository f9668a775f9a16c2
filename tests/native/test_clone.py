"""agent_swarm.native.clone_file against real filesystems: XFS (reflink) on a loop device,
and the tmp directory's filesystem (ext4 here: no reflink)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent_swarm import native

MiB = 1024 * 1024
FICLONE = 0x40049409  # _IOW(0x94, 9, int)


def write_random(path: Path, size: int, seed: int = 0) -> bytes:
    data = hashlib.shake_256(f"{seed}".encode()).digest(size)
    path.write_bytes(data)
    return data


def make_sparse(path: Path, size: int, chunks: list[tuple[int, int]]) -> None:
    """A sparse file of `size` bytes with random data at each (offset, length)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for i, (off, length) in enumerate(chunks):
            f.seek(off)
            f.write(hashlib.shake_256(f"chunk{i}".encode()).digest(length))


def same_content(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0


def filesystem_can_reflink(directory: Path) -> bool:
    """Probe FICLONE directly (independently of the code under test)."""
    with tempfile.TemporaryDirectory(dir=directory) as d:
        src, dst = Path(d, "a"), Path(d, "b")
        src.write_bytes(b"x" * 4096)
        with open(src, "rb") as fs, open(dst, "wb") as fd:
            try:
                fcntl.ioctl(fd.fileno(), FICLONE, fs.fileno())
            except OSError:
                return False
        return True


def extent_flags(path: Path) -> str:
    """`filefrag -v` output (flags column says `shared` for reflinked extents)."""
    if shutil.which("filefrag"):
        proc = subprocess.run(
            ["filefrag", "-v", str(path)], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            return proc.stdout
    if shutil.which("xfs_io"):
        proc = subprocess.run(
            ["xfs_io", "-r", "-c", "fiemap -v", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            return proc.stdout
    pytest.skip("neither filefrag nor xfs_io can list extents here")


def is_shared(path: Path) -> bool:
    out = extent_flags(path)
    # filefrag prints "shared"; xfs_io fiemap prints the FIEMAP_EXTENT_SHARED flag 0x2000.
    return "shared" in out or any(
        int(tok, 16) & 0x2000 for tok in out.split() if tok.startswith("0x")
    )


@pytest.fixture
def ext4_tmp(tmp_path: Path) -> Path:
    """tmp_path, provided its filesystem can't reflink (true for ext4, tmpfs)."""
    if filesystem_can_reflink(tmp_path):
        pytest.skip(
            f"{tmp_path} is on a filesystem that supports reflink; test needs one that doesn't"
        )
    return tmp_path


# ---------------------------------------------------------------------------- XFS reflink


@pytest.mark.root
def test_reflink_on_xfs_shares_extents_and_stays_independent(xfs_tmp: Path) -> None:
    src, dst = xfs_tmp / "src.img", xfs_tmp / "dst.img"
    data = write_random(src, 8 * MiB + 12345)  # unaligned tail on purpose
    assert native.clone_file(src, dst) == "reflink"
    assert dst.read_bytes() == data
    assert is_shared(src) and is_shared(dst), extent_flags(dst)

    # Writing the source after the clone does not show through in the clone.
    with open(src, "r+b") as f:
        f.write(b"\xff" * 65536)
        f.seek(5 * MiB)
        f.write(b"\xee" * 4096)
    assert dst.read_bytes() == data
    assert src.read_bytes() != data


@pytest.mark.root
def test_reflink_mode_on_xfs(xfs_tmp: Path) -> None:
    src, dst = xfs_tmp / "src", xfs_tmp / "dst"
    data = write_random(src, 3 * MiB, seed=3)
    assert native.clone_file(src, dst, mode="reflink") == "reflink"
    assert dst.read_bytes() == data


@pytest.mark.root
def test_copy_mode_on_xfs_copies_without_sharing(xfs_tmp: Path) -> None:
    src, dst = xfs_tmp / "src", xfs_tmp / "dst"
    data = write_random(src, 4 * MiB + 1, seed=4)
    assert native.clone_file(src, dst, mode="copy") == "copy"
    assert dst.read_bytes() == data
    assert not is_shared(dst), extent_flags(dst)


@pytest.mark.root
def test_reflink_keeps_holes_on_xfs(xfs_tmp: Path) -> None:
    src, dst = xfs_tmp / "sparse", xfs_tmp / "clone"
    make_sparse(src, 512 * MiB, [(10 * MiB, 2 * MiB), (300 * MiB, MiB)])
    assert native.clone_file(src, dst) == "reflink"
    assert same_content(src, dst)
    assert dst.stat().st_size == 512 * MiB
    assert dst.stat().st_blocks * 512 <= 8 * MiB


@pytest.mark.root
@pytest.mark.parametrize("mode_bits", [0o600, 0o755, 0o640, 0o444])
def test_mode_bits_kept_on_reflink(xfs_tmp: Path, mode_bits: int) -> None:
    src, dst = xfs_tmp / "src", xfs_tmp / "dst"
    write_random(src, 100_000)
    src.chmod(mode_bits)
    assert native.clone_file(src, dst) == "reflink"
    assert stat.S_IMODE(dst.stat().st_mode) == mode_bits


@pytest.mark.root
def test_concurrent_reflinks_on_xfs(xfs_tmp: Path) -> None:
    src = xfs_tmp / "base"
    data = write_random(src, 2 * MiB + 7, seed=8)
    dsts = [xfs_tmp / f"clone-{i}" for i in range(8)]
    barrier = threading.Barrier(8)

    def one(d: Path) -> str:
        barrier.wait()
        return native.clone_file(src, d)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, dsts))
    assert results == ["reflink"] * 8
    for d in dsts:
        assert d.read_bytes() == data
    assert sorted(os.listdir(xfs_tmp)) == sorted(["base"] + [d.name for d in dsts])


# ------------------------------------------------------------- no reflink (ext4 / tmpfs)


def test_reflink_mode_without_support_raises_and_leaves_nothing(ext4_tmp: Path) -> None:
    src, dst = ext4_tmp / "src", ext4_tmp / "dst"
    write_random(src, MiB)
    with pytest.raises(OSError) as ei:
        native.clone_file(src, dst, mode="reflink")
    assert ei.value.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY)
    assert ei.value.filename == str(src)
    assert ei.value.filename2 == str(dst)
    assert "reflink not supported" in str(ei.value)
    assert os.listdir(ext4_tmp) == ["src"]


def test_auto_without_reflink_copies_and_keeps_holes(ext4_tmp: Path) -> None:
    src, dst = ext4_tmp / "disk.raw", ext4_tmp / "copy.raw"
    make_sparse(
        src,
        1024 * MiB,
        [(0, MiB), (100 * MiB, 3 * MiB), (700 * MiB + 4096, 2 * MiB), (1024 * MiB - 8192, 8192)],
    )
    assert native.clone_file(src, dst) == "copy"
    assert same_content(src, dst)
    s, d = src.stat(), dst.stat()
    assert d.st_size == s.st_size == 1024 * MiB
    # About as many blocks as the source (a few MiB), nowhere near 1 GiB.
    assert d.st_blocks * 512 <= s.st_blocks * 512 + 2 * MiB, (s.st_blocks, d.st_blocks)


def test_auto_keeps_trailing_hole(ext4_tmp: Path) -> None:
    src, dst = ext4_tmp / "src", ext4_tmp / "dst"
    make_sparse(src, 256 * MiB, [(MiB, MiB)])  # everything after 2 MiB is a hole
    assert native.clone_file(src, dst) == "copy"
    assert dst.stat().st_size == 256 * MiB
    assert same_content(src, dst)
    assert dst.stat().st_blocks * 512 <= 3 * MiB


@pytest.mark.parametrize("mode", ["auto", "copy"])
def test_copy_small_and_empty_files(ext4_tmp: Path, mode: str) -> None:
    for size in (0, 1, 4095, 4097, 3 * MiB + 3):
        src, dst = ext4_tmp / f"s{size}", ext4_tmp / f"d{size}-{mode}"
        data = write_random(src, size, seed=size)
        assert native.clone_file(src, dst, mode=mode) == "copy"  # type: ignore[arg-type]
        assert dst.read_bytes() == data


@pytest.mark.parametrize("mode_bits", [0o600, 0o755, 0o640, 0o400])
def test_mode_bits_kept_on_copy(ext4_tmp: Path, mode_bits: int) -> None:
    src, dst = ext4_tmp / "src", ext4_tmp / "dst"
    write_random(src, 10_000)
    src.chmod(mode_bits)
    old = os.umask(0o077)  # the result must not depend on the umask
    try:
        assert native.clone_file(src, dst, mode="copy") == "copy"
    finally:
        os.umask(old)
    assert stat.S_IMODE(dst.stat().st_mode) == mode_bits
    assert dst.read_bytes() == src.read_bytes()


def test_overwrite(ext4_tmp: Path) -> None:
    src, dst = ext4_tmp / "src", ext4_tmp / "dst"
    data = write_random(src, 200_000, seed=1)
    dst.write_bytes(b"old contents")
    before = dst.stat()

    with pytest.raises(FileExistsError) as ei:
        native.clone_file(src, dst)
    assert ei.value.errno == errno.EEXIST
    assert ei.value.filename == str(dst)
    assert dst.read_bytes() == b"old contents"
    assert dst.stat().st_ino == before.st_ino
    assert sorted(os.listdir(ext4_tmp)) == ["dst", "src"]

    assert native.clone_file(src, dst, overwrite=True) == "copy"
    assert dst.read_bytes() == data
    assert sorted(os.listdir(ext4_tmp)) == ["dst", "src"]


@pytest.mark.root
def test_overwrite_on_xfs_with_reflink(xfs_tmp: Path) -> None:
    src, dst = xfs_tmp / "src", xfs_tmp / "dst"
    data = write_random(src, MiB, seed=2)
    dst.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        native.clone_file(src, dst, mode="reflink")
    assert dst.read_bytes() == b"old"
    assert native.clone_file(src, dst, mode="reflink", overwrite=True) == "reflink"
    assert dst.read_bytes() == data
    assert sorted(os.listdir(xfs_tmp)) == ["dst", "src"]


def test_concurrent_copies(ext4_tmp: Path) -> None:
    src = ext4_tmp / "base"
    make_sparse(src, 64 * MiB, [(0, MiB), (32 * MiB, 2 * MiB)])
    dsts = [ext4_tmp / f"copy-{i}" for i in range(8)]
    barrier = threading.Barrier(8)

    def one(d: Path) -> str:
        barrier.wait()
        return native.clone_file(src, d)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, dsts)) == ["copy"] * 8
    for d in dsts:
        assert same_content(src, d)
    assert sorted(os.listdir(ext4_tmp)) == sorted(["base"] + [d.name for d in dsts])


def test_concurrent_clones_to_same_destination(ext4_tmp: Path) -> None:
    """Racing writers of one dst: exactly one wins, the others get EEXIST, no debris."""
    src, dst = ext4_tmp / "src", ext4_tmp / "dst"
    data = write_random(src, 4 * MiB, seed=6)
    barrier = threading.Barrier(8)

    def one(_: int) -> str:
        barrier.wait()
        try:
            return native.clone_file(src, dst)
        except FileExistsError:
            return "exists"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert results.count("copy") == 1, results
    assert results.count("exists") == 7
    assert dst.read_bytes() == data
    assert sorted(os.listdir(ext4_tmp)) == ["dst", "src"]


# ------------------------------------------------------------------------ bad input


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as ei:
        native.clone_file(tmp_path / "nope", tmp_path / "dst")
    assert ei.value.errno == errno.ENOENT
    assert ei.value.filename == str(tmp_path / "nope")
    assert os.listdir(tmp_path) == []


def test_directory_as_source(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError) as ei:
        native.clone_file(tmp_path / "adir", tmp_path / "dst")
    assert ei.value.filename == str(tmp_path / "adir")
    assert os.listdir(tmp_path) == ["adir"]


@pytest.mark.timeout(20)
def test_fifo_as_source_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError) as ei:
        native.clone_file(tmp_path / "fifo", tmp_path / "dst")
    assert ei.value.errno == errno.EINVAL
    assert "not a regular file" in str(ei.value)
    assert os.listdir(tmp_path) == ["fifo"]


@pytest.mark.parametrize("mode", ["auto", "copy", "reflink"])
def test_existing_destination_untouched(tmp_path: Path, mode: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_random(src, 1000)
    dst.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        native.clone_file(src, dst, mode=mode)  # type: ignore[arg-type]
    assert dst.read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]


def test_destination_in_missing_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_random(src, 1000)
    dst = tmp_path / "no" / "such" / "dir" / "dst"
    with pytest.raises(FileNotFoundError) as ei:
        native.clone_file(src, dst)
    assert ei.value.filename == str(dst)
    assert os.listdir(tmp_path) == ["src"]


def test_invalid_mode(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_random(src, 10)
    with pytest.raises(ValueError, match="mode"):
        native.clone_file(src, tmp_path / "dst", mode="fast")  # type: ignore[arg-type]
    # The compiled layer validates too.
    from agent_swarm import _native

    with pytest.raises(ValueError, match="mode"):
        _native.clone_file(os.fsencode(src), os.fsencode(tmp_path / "dst"), "fast", False)
    assert os.listdir(tmp_path) == ["src"]


def test_empty_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        native.clone_file("", tmp_path / "dst")
    with pytest.raises(ValueError):
        native.clone_file(tmp_path / "dst", "")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ permission (as nobody)

_AS_NOBODY = textwrap.dedent(
    """
    import errno, sys
    from agent_swarm import native
    try:
        native.clone_file(sys.argv[1], sys.argv[2])
    except PermissionError as e:
        print("PermissionError", e.errno, e.filename)
    except BaseException as e:
        print("other", type(e).__name__, e)
    else:
        print("ok")
    """
)


@pytest.mark.root
@pytest.mark.parametrize("case", ["unreadable-source", "unwritable-directory"])
def test_permission_denied_as_nobody(case: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the unprivileged user `nobody`")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("there is no `nobody` user")

    # /tmp itself, not pytest's root-only tmp_path, so that nobody can reach the files.
    base = Path(tempfile.mkdtemp(prefix="as-perm-"))
    try:
        base.chmod(0o755)
        src_dir = base / "src"
        dst_dir = base / "dst"
        src_dir.mkdir(mode=0o755)
        dst_dir.mkdir(mode=0o777)
        dst_dir.chmod(0o777)
        src = src_dir / "secret"
        write_random(src, 4096)
        if case == "unreadable-source":
            src.chmod(0o600)  # root-owned: nobody can't read it
            dst = dst_dir / "copy"
            expected_filename = str(src)
        else:
            src.chmod(0o644)
            dst_dir.chmod(0o755)  # root-owned: nobody can't create files in it
            dst = dst_dir / "copy"
            expected_filename = str(dst)

        proc = subprocess.run(
            [
                "setpriv",
                f"--reuid={nobody.pw_uid}",
                f"--regid={nobody.pw_gid}",
                "--clear-groups",
                sys.executable,
                "-c",
                _AS_NOBODY,
                str(src),
                str(dst),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "HOME": "/"},
        )
        if proc.returncode != 0 or "No module named" in proc.stdout + proc.stderr:
            pytest.skip(f"cannot run the interpreter as nobody: {proc.stderr.strip()[:300]}")
        assert proc.stdout.split() == ["PermissionError", str(errno.EACCES), expected_filename], (
            proc.stdout,
            proc.stderr,
        )
        assert os.listdir(dst_dir) == []
        assert os.listdir(src_dir) == ["secret"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
