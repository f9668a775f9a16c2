"""Downloads (guest -> host, ``agent-swarm cp`` out of a VM), where nothing the guest sends is
trusted: plain names only, writes only through directory file descriptors (no symlink
followed), permission bits only, and bounded entries, depth, size and free space (see the
package docstring).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, SFTP_EOF, int64

from agent_swarm.errors import AgentSwarmError, ConfigError
from agent_swarm.ssh.transfer.common import (
    CHUNK,
    MAX_DEPTH,
    MAX_ENTRIES,
    MIN_FREE,
    PIPELINE,
    Progress,
    _check_name,
    _h,
    _kind,
    _on_host,
    _progress_cb,
    _show,
    _umask,
)
from agent_swarm.ssh.transfer.wire import _Attrs, _GuestError, _in_vm, _remote_stat, _Wire


def download(
    sftp: paramiko.SFTPClient,
    src: str,
    dst: Path,
    *,
    recursive: bool,
    progress: Progress | None = None,
    notice: Progress | None = None,
    preserve: bool = False,
    max_size: int | None = None,
    max_entries: int = MAX_ENTRIES,
    max_depth: int = MAX_DEPTH,
    min_free: int = MIN_FREE,
) -> int:
    """Copy guest ``src`` to host ``dst``; returns the number of files copied.

    ``src`` itself is resolved by the guest (it may be a symlink there); nothing inside it is
    trusted: see the module docstring. ``notice`` (default: ``progress``) gets one line per
    skipped entry. ``max_size`` caps the bytes copied in total.
    """
    if not hasattr(os, "O_NOFOLLOW") or os.mkdir not in os.supports_dir_fd:
        raise AgentSwarmError("copying out of a VM needs a POSIX host (O_NOFOLLOW, *at() calls)")
    d = _Download(
        sftp, progress, notice or progress, preserve, max_size, max_entries, max_depth, min_free
    )
    st = _remote_stat(d.wire, src)
    if st is None:
        raise AgentSwarmError(f"no such file in the VM: {src}")
    if st.ftype == stat.S_IFDIR:
        if not recursive:
            raise ConfigError(f"{src} is a directory in the VM", hint="use -r to copy directories")
    elif st.ftype != stat.S_IFREG:
        raise AgentSwarmError(f"{src} in the VM is {_kind(st.mode or 0)}: only files are copied")
    if dst.is_dir():
        parent, name = dst, d.top_name(src)
    elif not dst.parent.is_dir():
        raise AgentSwarmError(f"the directory {dst.parent} does not exist on the host")
    else:
        parent, name = dst.parent, dst.name
    with _on_host(f"cannot open {parent}"):
        pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if st.ftype == stat.S_IFDIR:
            d.tree(src, pfd, name, parent / name, st)
        else:
            d.file(src, pfd, name, parent / name, st)
    finally:
        os.close(pfd)
    return d.files


@dataclass
class _Dir:
    """A directory being filled: guest path, host path, open host fd, final mode, entries left."""

    rpath: str
    hpath: Path
    fd: int
    mode: int | None  # chmod when done (None: it existed before, leave its mode alone)
    entries: deque[tuple[str, _Attrs]]


class _Download:
    def __init__(
        self,
        sftp: paramiko.SFTPClient,
        progress: Progress | None,
        notice: Progress | None,
        preserve: bool,
        max_size: int | None,
        max_entries: int,
        max_depth: int,
        min_free: int,
    ) -> None:
        self.wire = _Wire(sftp)
        self.progress = progress
        self.notice = notice or (lambda _: None)
        self.umask = 0 if preserve else _umask()
        self.max_size, self.max_entries, self.max_depth = max_size, max_entries, max_depth
        self.min_free = min_free
        self.entries = self.bytes = self.files = 0

    def _mode(self, attrs: _Attrs, default: int) -> int:
        mode = attrs.mode & 0o777 if attrs.mode is not None else default
        return mode & ~self.umask

    def top_name(self, src: str) -> str:
        """The name of ``src`` in a destination directory."""
        base = os.fsencode(posixpath.basename(src.rstrip("/")))
        if base in (b"", b".", b".."):
            with _in_vm(f"cannot resolve {_show(src)}"):
                base = posixpath.basename(self.wire.realpath(src))
            if not base:
                raise ConfigError(
                    f"{src} is the VM's root directory: name the copy",
                    hint="give a destination that does not exist yet, e.g. ./out/root",
                )
        return _check_name(base, posixpath.dirname(src.rstrip("/")) or ".")

    def _list(self, rdir: str) -> deque[tuple[str, _Attrs]]:
        out = []
        with (
            _in_vm(f"cannot list {_show(rdir)}"),
            contextlib.closing(self.wire.readdir(rdir)) as it,
        ):
            for raw, attrs in it:
                self.entries += 1  # "." and ".." too: a guest could send them without end
                if self.entries > self.max_entries:
                    raise AgentSwarmError(
                        f"stopped in {_show(rdir)} in the VM: more than {self.max_entries:,} "
                        "entries in total",
                        hint="copy a smaller directory (each cp copies at most this many)",
                    )
                if raw not in (b".", b".."):
                    out.append((_check_name(raw, rdir), attrs))
        return deque(sorted(out, key=lambda e: e[0]))

    def _enter(self, pfd: int, name: str, rpath: str, hpath: Path, attrs: _Attrs) -> _Dir:
        """Create (or merge into) the directory ``name`` under ``pfd``; never through a symlink."""
        mode: int | None = None
        with _on_host(f"cannot create {_h(hpath)}"):
            try:
                os.mkdir(name, 0o700, dir_fd=pfd)
                mode = self._mode(attrs, 0o755)
            except FileExistsError:
                pass
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd
            )
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise AgentSwarmError(f"cannot open {_h(hpath)}: {exc.strerror}") from exc
            try:
                link = stat.S_ISLNK(os.lstat(name, dir_fd=pfd).st_mode)
            except OSError:
                link = False
            why = "it is a symlink (never followed)" if link else "it is not a directory"
            raise AgentSwarmError(f"refused to copy a directory to {_h(hpath)}: {why}") from exc
        try:
            if mode is not None:
                os.fchmod(fd, 0o700)  # ours to fill whatever the umask; final mode when done
            entries = self._list(rpath)
        except BaseException:
            os.close(fd)
            raise
        return _Dir(rpath, hpath, fd, mode, entries)

    def tree(self, src: str, pfd: int, name: str, hpath: Path, attrs: _Attrs) -> None:
        """Copy the guest directory ``src`` to ``name`` under ``pfd``, depth first, no recursion."""
        stack: list[_Dir] = []
        try:
            stack.append(self._enter(pfd, name, src, hpath, attrs))
            while stack:
                cur = stack[-1]
                if not cur.entries:
                    stack.pop()
                    try:
                        if cur.mode is not None:
                            with _on_host(f"cannot set the mode of {_h(cur.hpath)}"):
                                os.fchmod(cur.fd, cur.mode)
                    finally:
                        os.close(cur.fd)
                    continue
                name, attrs = cur.entries.popleft()
                rpath, hp = posixpath.join(cur.rpath, name), cur.hpath / name
                if attrs.ftype == stat.S_IFDIR:
                    if len(stack) >= self.max_depth:
                        raise AgentSwarmError(
                            f"stopped at {_show(rpath)} in the VM: more than {self.max_depth} "
                            "directory levels (a loop?)"
                        )
                    stack.append(self._enter(cur.fd, name, rpath, hp, attrs))
                elif attrs.ftype == stat.S_IFREG:
                    self.file(rpath, cur.fd, name, hp, attrs)
                elif attrs.ftype == stat.S_IFLNK:
                    self.notice(f"skipped {_show(rpath)} in the VM: a symlink (never copied out)")
                else:
                    self.notice(f"skipped {_show(rpath)} in the VM: {_kind(attrs.mode or 0)}")
        finally:
            for left in stack:
                os.close(left.fd)

    def file(self, rpath: str, pfd: int, name: str, hpath: Path, attrs: _Attrs) -> None:
        """Copy one guest file to ``name`` in the directory ``pfd``: temp file, then rename."""
        tmp = f".agent-swarm-{uuid.uuid4().hex[:12]}.tmp"  # nothing of the guest's name in it
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with _on_host(f"cannot create a file next to {_h(hpath)}"):
            fd = os.open(tmp, flags, 0o600, dir_fd=pfd)
        try:
            self._fetch(rpath, fd, hpath)
            with _on_host(f"cannot write {_h(hpath)}"):
                os.fchmod(fd, self._mode(attrs, 0o644))
                os.close(fd)
                fd = -1
                os.replace(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=pfd)
            raise
        self.files += 1

    def _reserve(self, size: int, fd: int, rshow: str) -> None:
        if self.max_size is not None and self.bytes + size > self.max_size:
            raise AgentSwarmError(
                f"stopped at {rshow} in the VM ({size:,} bytes): the copy would pass "
                f"--max-size ({self.max_size:,} bytes)"
            )
        with _on_host("cannot check free space"):
            vfs = os.fstatvfs(fd)
        free = vfs.f_bavail * vfs.f_frsize
        if free - size < self.min_free:
            raise AgentSwarmError(
                f"stopped at {rshow} in the VM ({size:,} bytes): the destination would have "
                f"less than {self.min_free >> 20} MiB free ({free >> 20} MiB free now)"
            )
        self.bytes += size

    def _fetch(self, rpath: str, fd: int, hpath: Path) -> None:
        """Write exactly the bytes the guest announced for ``rpath`` to ``fd``, or raise."""
        rshow = _show(rpath)
        with _in_vm(f"cannot open {rshow}"):
            handle = self.wire.open_read(rpath)
        try:
            with _in_vm(f"cannot read {rshow}"):
                size = self.wire.fstat(handle).size
            if size is None:
                raise AgentSwarmError(f"cannot copy {rshow}: the VM did not say how large it is")
            self._reserve(size, fd, rshow)
            with _in_vm(f"cannot read {rshow}"), _on_host(f"cannot write {_h(hpath)}"):
                self._pipe(handle, fd, size, rshow, _progress_cb(_show(hpath.name), self.progress))
        finally:
            self.wire.close(handle)

    def _pipe(
        self, handle: bytes, fd: int, size: int, rshow: str, cb: Callable[[int, int], None] | None
    ) -> None:
        wire = self.wire
        pending: dict[int, tuple[int, int]] = {}  # request -> (offset, length), oldest first
        redo: deque[tuple[int, int]] = deque()  # the rest of short reads
        offset = received = 0
        while received < size:
            while len(pending) < PIPELINE and (redo or offset < size):
                if redo:
                    off, n = redo.popleft()
                else:
                    off, n = offset, min(CHUNK, size - offset)
                    offset += n
                pending[wire.send(CMD_READ, handle, int64(off), n)] = (off, n)
            num = next(iter(pending))
            off, n = pending.pop(num)
            t, r = wire.reply(num)
            if t == CMD_STATUS:
                err = r.status()
                if err.code != SFTP_EOF:
                    raise err
                raise AgentSwarmError(
                    f"{rshow} in the VM ended after {received:,} of the {size:,} bytes it "
                    "announced (changed while copying?): not copied"
                )
            if t != CMD_DATA:
                raise _GuestError(f"unexpected SFTP reply type {t}")
            data = r.string()
            if not data or len(data) > n:
                raise AgentSwarmError(
                    f"the VM's SFTP server sent {len(data):,} bytes for a read of {n:,} "
                    f"in {rshow}: not copied"
                )
            if len(data) < n:
                redo.append((off + len(data), n - len(data)))
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, off)
                view, off = view[written:], off + written
            received += len(data)
            if cb is not None:
                cb(received, size)
        t, r = wire.reply(wire.send(CMD_READ, handle, int64(size), 1))  # must be at its end now
        if t == CMD_STATUS:
            err = r.status()
            if err.code != SFTP_EOF:
                raise err
        else:
            raise AgentSwarmError(
                f"{rshow} in the VM sent more than the {size:,} bytes it announced "
                "(growing while copying?): cut off, not copied"
            )
