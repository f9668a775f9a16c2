"""File transfer over SFTP: directories with -r, modes kept, progress, never a partial file.

Every file is written under a temporary name in its destination directory and renamed into
place when complete, on the guest (SFTP posix-rename) as on the host.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import paramiko

from agent_swarm.errors import AgentSwarmError, ConfigError

Progress = Callable[[str], None]
PROGRESS_MIN = 8 << 20


def _tmp_name(final: str) -> str:
    d, base = posixpath.split(final)
    return posixpath.join(d, f".{base}.agent-swarm-{uuid.uuid4().hex[:8]}.tmp")


def _progress_cb(label: str, progress: Progress | None) -> Callable[[int, int], None] | None:
    if progress is None:
        return None

    def cb(done: int, total: int) -> None:
        if total >= PROGRESS_MIN:
            progress(f"copying {label}: {100 * done // max(total, 1)}% of {total >> 20} MiB")

    return cb


def _remote_stat(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
    try:
        return sftp.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AgentSwarmError(f"cannot access {path} in the VM: {exc}") from exc


def upload(
    sftp: paramiko.SFTPClient,
    src: Path,
    dst: str,
    *,
    recursive: bool,
    progress: Progress | None = None,
) -> int:
    """Copy host ``src`` to guest ``dst``; returns the number of files copied."""
    if not src.exists():
        raise AgentSwarmError(f"no such file on the host: {src}")
    st = _remote_stat(sftp, dst)
    if st is not None and stat.S_ISDIR(st.st_mode or 0):
        dst = posixpath.join(dst, src.name)
    else:
        parent = posixpath.dirname(dst.rstrip("/")) or "/"
        pst = _remote_stat(sftp, parent)
        if pst is None or not stat.S_ISDIR(pst.st_mode or 0):
            raise AgentSwarmError(
                f"the directory {parent} does not exist in the VM",
                hint=f"create it first (agent-swarm run NAME -- mkdir -p {parent})",
            )
    if src.is_dir():
        if not recursive:
            raise ConfigError(f"{src} is a directory", hint="use -r to copy directories")
        return _upload_tree(sftp, src, dst, progress)
    _upload_file(sftp, src, dst, progress)
    return 1


def _upload_file(sftp: paramiko.SFTPClient, src: Path, dst: str, progress: Progress | None) -> None:
    tmp = _tmp_name(dst)
    try:
        sftp.put(str(src), tmp, callback=_progress_cb(src.name, progress), confirm=True)
        sftp.chmod(tmp, stat.S_IMODE(src.stat().st_mode))
        sftp.posix_rename(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            sftp.remove(tmp)
        raise


def _upload_tree(sftp: paramiko.SFTPClient, src: Path, dst: str, progress: Progress | None) -> int:
    count = 0
    if _remote_stat(sftp, dst) is None:
        sftp.mkdir(dst, stat.S_IMODE(src.stat().st_mode))
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        rdir = posixpath.join(dst, *rel.parts) if rel.parts else dst
        for d in sorted(dirs):
            rd = posixpath.join(rdir, d)
            if _remote_stat(sftp, rd) is None:
                sftp.mkdir(rd, stat.S_IMODE((Path(root) / d).stat().st_mode))
        for f in sorted(files):
            p = Path(root) / f
            if p.is_symlink() or not p.is_file():
                continue  # only regular files (symlinks would escape the tree)
            _upload_file(sftp, p, posixpath.join(rdir, f), progress)
            count += 1
    return count


def download(
    sftp: paramiko.SFTPClient,
    src: str,
    dst: Path,
    *,
    recursive: bool,
    progress: Progress | None = None,
) -> int:
    st = _remote_stat(sftp, src)
    if st is None:
        raise AgentSwarmError(f"no such file in the VM: {src}")
    if dst.is_dir():
        dst = dst / posixpath.basename(src.rstrip("/"))
    elif not dst.parent.is_dir():
        raise AgentSwarmError(f"the directory {dst.parent} does not exist on the host")
    if stat.S_ISDIR(st.st_mode or 0):
        if not recursive:
            raise ConfigError(f"{src} is a directory in the VM", hint="use -r to copy directories")
        return _download_tree(sftp, src, dst, progress)
    _download_file(sftp, src, dst, st, progress)
    return 1


def _download_file(
    sftp: paramiko.SFTPClient,
    src: str,
    dst: Path,
    st: paramiko.SFTPAttributes,
    progress: Progress | None,
) -> None:
    tmp = dst.with_name(f".{dst.name}.agent-swarm-{uuid.uuid4().hex[:8]}.tmp")
    try:
        sftp.get(src, str(tmp), callback=_progress_cb(posixpath.basename(src), progress))
        os.chmod(tmp, stat.S_IMODE(st.st_mode or 0o644))
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _download_tree(
    sftp: paramiko.SFTPClient, src: str, dst: Path, progress: Progress | None
) -> int:
    count = 0
    dst.mkdir(exist_ok=True)
    for entry in sftp.listdir_attr(src):
        rsrc = posixpath.join(src, entry.filename)
        mode = entry.st_mode or 0
        if stat.S_ISDIR(mode):
            count += _download_tree(sftp, rsrc, dst / entry.filename, progress)
            os.chmod(dst / entry.filename, stat.S_IMODE(mode))
        elif stat.S_ISREG(mode):
            _download_file(sftp, rsrc, dst / entry.filename, entry, progress)
            count += 1
    return count
