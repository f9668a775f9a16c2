"""Uploads (host -> guest, ``agent-swarm cp`` into a VM): files, and with ``recursive``
directory trees; symlinks copied as symlinks or followed with ``dereference``, special files
skipped with a notice, every entry written under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterator
from pathlib import Path

import paramiko

from agent_swarm.errors import AgentSwarmError, ConfigError
from agent_swarm.ssh.transfer.common import (
    _SFTP_ERRORS,
    Progress,
    _kind,
    _progress_cb,
    _quote,
    _tmp_name,
    _umask,
)
from agent_swarm.ssh.transfer.wire import _remote_stat, _Wire


def upload(
    sftp: paramiko.SFTPClient,
    src: Path,
    dst: str,
    *,
    recursive: bool,
    progress: Progress | None = None,
    notice: Progress | None = None,
    preserve: bool = False,
    dereference: bool = False,
) -> int:
    """Copy host ``src`` to guest ``dst``; returns the number of files (and symlinks) copied.

    ``src`` itself is followed if it is a symlink. Inside a tree (``recursive``), symlinks are
    copied as symlinks, or followed with ``dereference`` (each real directory copied once, so
    loops end); fifos, sockets and devices are skipped with a ``notice``. Modes: permission
    bits only, minus the umask unless ``preserve``.
    """
    wire = _Wire(sftp)
    if not src.exists():
        raise AgentSwarmError(f"no such file on the host: {src}")
    st = _remote_stat(wire, dst)
    if st is not None and st.ftype == stat.S_IFDIR:
        dst = posixpath.join(dst, src.name if src.name not in ("", "..") else src.resolve().name)
    else:
        parent = posixpath.dirname(dst.rstrip("/")) or "/"
        pst = _remote_stat(wire, parent)
        if pst is None or pst.ftype != stat.S_IFDIR:
            raise AgentSwarmError(
                f"the directory {parent} does not exist in the VM",
                hint=f"create it first (agent-swarm run NAME -- mkdir -p {parent})",
            )
    up = _Upload(sftp, wire, progress, notice or progress, preserve, dereference)
    if src.is_dir():
        if not recursive:
            raise ConfigError(f"{src} is a directory", hint="use -r to copy directories")
        up.tree(src, dst)
    elif src.is_file():
        up.file(src, dst, src.stat().st_mode)
    else:
        raise AgentSwarmError(f"{src} is {_kind(src.stat().st_mode)}: only files are copied")
    return up.count


class _Upload:
    def __init__(
        self,
        sftp: paramiko.SFTPClient,
        wire: _Wire,
        progress: Progress | None,
        notice: Progress | None,
        preserve: bool,
        dereference: bool,
    ) -> None:
        self.sftp, self.wire, self.progress = sftp, wire, progress
        self.notice = notice or (lambda _: None)
        self.umask = 0 if preserve else _umask()
        self.dereference = dereference
        self.count = 0

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except _SFTP_ERRORS as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise AgentSwarmError(f"{what}: {_quote(text)}") from exc

    def tree(self, src: Path, dst: str) -> None:
        root = src.stat()
        seen = {(root.st_dev, root.st_ino): src}
        made: list[tuple[str, int]] = []  # guest directories we created, and their final mode
        self._mkdir(dst, root.st_mode, made)
        stack = [(src, dst)]
        while stack:
            hdir, rdir = stack.pop()
            with self._errors(f"cannot read {hdir}"):
                entries = sorted(os.scandir(hdir), key=lambda e: e.name)
            subdirs = []
            for e in entries:
                hp, rp = Path(e.path), posixpath.join(rdir, e.name)
                if e.is_symlink() and not self.dereference:
                    with self._errors(f"cannot read the symlink {hp}"):
                        target = os.readlink(hp)
                    self._symlink(target, rp)
                    continue
                try:
                    st = hp.stat() if self.dereference else hp.lstat()
                except OSError as exc:  # -L: dangling symlink, or a loop of symlinks (ELOOP)
                    self.notice(f"skipped {hp}: {exc.strerror or exc}")
                    continue
                if stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        self.notice(f"skipped {hp}: the same directory as {seen[key]} (a loop?)")
                        continue
                    seen[key] = hp
                    self._mkdir(rp, st.st_mode, made)
                    subdirs.append((hp, rp))
                elif stat.S_ISREG(st.st_mode):
                    self.file(hp, rp, st.st_mode)
                else:
                    self.notice(f"skipped {hp}: {_kind(st.st_mode)} (not copied)")
            stack.extend(reversed(subdirs))
        for rdir, mode in reversed(made):  # deepest first; each stayed writable while filled
            with self._errors(f"cannot set the mode of {rdir} in the VM"):
                self.sftp.chmod(rdir, mode)

    def _mkdir(self, rdir: str, mode: int, made: list[tuple[str, int]]) -> None:
        if _remote_stat(self.wire, rdir) is not None:
            return  # merge into an existing directory, leaving its mode alone
        with self._errors(f"cannot create {rdir} in the VM"):
            self.sftp.mkdir(rdir, 0o700)
        made.append((rdir, mode & 0o777 & ~self.umask))

    def file(self, src: Path, dst: str, mode: int) -> None:
        sent = 0
        cb = _progress_cb(src.name, self.progress)

        def counted(done: int, total: int) -> None:
            nonlocal sent
            sent = done
            if cb is not None:
                cb(done, total)

        with self._placed(dst, f"cannot copy {src} to {dst} in the VM") as tmp:
            self.sftp.put(str(src), tmp, callback=counted, confirm=False)
            st = _remote_stat(self.wire, tmp)
            if st is None or st.size != sent:
                raise AgentSwarmError(
                    f"cannot copy {src} to {dst} in the VM: "
                    f"{sent} bytes sent, {st.size if st else 'no file'} arrived"
                )
            self.sftp.chmod(tmp, mode & 0o777 & ~self.umask)

    def _symlink(self, target: str, dst: str) -> None:
        with self._placed(dst, f"cannot create the symlink {dst} in the VM") as tmp:
            self.sftp.symlink(target, tmp)

    @contextlib.contextmanager
    def _placed(self, dst: str, what: str) -> Iterator[str]:
        """A temporary name next to ``dst`` to fill; renamed to ``dst`` when the block
        succeeds, removed when it fails. Counts the copied entry."""
        tmp = _tmp_name(dst)
        try:
            with self._errors(what):
                yield tmp
                self.sftp.posix_rename(tmp, dst)
        except BaseException:
            with contextlib.suppress(*_SFTP_ERRORS):
                self.sftp.remove(tmp)
            raise
        self.count += 1
