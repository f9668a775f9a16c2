"""File transfer over SFTP (``agent-swarm cp``): directories with -r, progress, no partial file.

Every file is written under a temporary name in its destination directory and renamed into
place when complete, on the guest (SFTP posix-rename) as on the host.

The guest is untrusted: its SFTP server can send any name, mode, size or amount of data.
Downloads therefore

* accept only plain file names from a listing (one path component: no ``/``, NUL or control
  character, not empty, at most 255 bytes of UTF-8) and stop at the first other one; the
  ``.`` and ``..`` entries every server lists are ignored;
* write only through directory file descriptors: directories are entered with
  ``O_DIRECTORY|O_NOFOLLOW``, files created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` under a temporary
  name and renamed within the same directory, so no symlink in the destination is followed,
  whoever placed it there. Symlinks and special files in the guest are skipped with a notice,
  never recreated;
* keep only permission bits (``mode & 0o777``: never setuid, setgid or sticky), minus the
  user's umask unless ``preserve``;
* stop at :data:`MAX_ENTRIES` entries, :data:`MAX_DEPTH` levels, before the destination's
  free space falls under :data:`MIN_FREE` and past ``max_size`` bytes; a file that sends more
  (or less) than the size it announced is not kept;
* parse the guest's replies with bounds checks of their own (see :class:`_Wire`).

Uploads copy symlinks as symlinks (or follow them with ``dereference``, each real directory
once), and skip fifos, sockets and devices with a notice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import unicodedata
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_FSTAT,
    CMD_HANDLE,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_REALPATH,
    CMD_STAT,
    CMD_STATUS,
    SFTP_EOF,
    SFTP_FAILURE,
    SFTP_FLAG_READ,
    SFTP_NO_SUCH_FILE,
    int64,
)

from agent_swarm.errors import AgentSwarmError, ConfigError
from agent_swarm.textsafe import sanitize

Progress = Callable[[str], None]

PROGRESS_MIN = 8 << 20
"""Files at least this large get percentage progress lines."""

MAX_ENTRIES = 1_000_000
"""Most directory entries one download reads (files, directories, skipped entries, and the
``.``/``..`` of each listing alike): a guest that lists without end is stopped here."""

MAX_DEPTH = 256
"""Most directory levels one download goes down: a guest directory tree that never ends (or
loops) is stopped here. The host holds one open directory per level."""

MIN_FREE = 1 << 30
"""A download stops before a file would leave less than this much free space on the
destination's filesystem (checked before each file, against the size the guest announced)."""

NAME_MAX = 255
"""Longest file name accepted from the guest, in bytes (the usual host limit)."""

CHUNK = 32768
"""Bytes per SFTP read request (paramiko's and most servers' maximum)."""

PIPELINE = 32
"""Read requests in flight at once per file (1 MiB with CHUNK); bounds the memory one file
transfer can use."""

_TEXT_MAX = 200  # characters of guest-sent error text quoted in one of our messages
_SFTP_ERRORS = (OSError, EOFError, UnicodeError, paramiko.SFTPError, paramiko.SSHException)


# ---------------------------------------------------------------- names, modes, messages


def _show(text: str) -> str:
    """``text`` as is if it prints harmlessly on one line, else its escaped repr()."""
    return text if text.isprintable() else repr(text)


def _h(path: Path) -> str:
    return _show(str(path))


def _quote(text: str) -> str:
    """Guest-sent free text (error messages) as one short line, safe on a terminal."""
    return sanitize(text, max_len=_TEXT_MAX, keep_newlines=False)


def _check_name(raw: bytes, where: str) -> str:
    """``raw`` (a name the guest listed in ``where``) if it is a plain file name, else raise."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        name, shown, problem = "", repr(raw[:64]), "is not UTF-8"
    else:
        shown = repr(name if len(name) <= 64 else name[:64] + "...")
        if not name or name in (".", ".."):
            problem = "is not a file name"
        elif "/" in name:
            problem = "contains '/'"
        elif any(unicodedata.category(c) == "Cc" for c in name):  # NUL, newline, ESC, DEL, C1
            problem = "contains a control character"
        elif len(raw) > NAME_MAX:
            problem = f"is longer than {NAME_MAX} bytes"
        else:
            return name
    raise AgentSwarmError(
        f"refused the entry {shown} listed in {_show(where)} in the VM: the name {problem}",
        hint="nothing was written for it; the VM's SFTP server sent a name no copy can have",
    )


def _umask() -> int:
    mask = os.umask(0o077)  # briefly stricter, never looser, if another thread creates files
    os.umask(mask)
    return mask


def _kind(mode: int) -> str:
    return {
        stat.S_IFIFO: "a fifo",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFLNK: "a symlink",
    }.get(stat.S_IFMT(mode), "of unknown type")


def _tmp_name(final: str) -> str:
    d, base = posixpath.split(final)
    return posixpath.join(d, f".{base}.agent-swarm-{uuid.uuid4().hex[:8]}.tmp")


def _progress_cb(label: str, progress: Progress | None) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    last = -1

    def cb(done: int, total: int) -> None:
        nonlocal last
        pct = 100 * done // max(total, 1)
        if total >= PROGRESS_MIN and pct != last:
            last = pct
            progress(f"copying {label}: {pct}% of {total >> 20} MiB")

    return cb


# ---------------------------------------------------------------- the SFTP wire


class _GuestError(Exception):
    """The guest's SFTP server answered with an error, an unparsable reply, or went away."""

    def __init__(self, text: str, code: int = SFTP_FAILURE) -> None:
        super().__init__(_quote(text))
        self.code = code


@dataclass(frozen=True, slots=True)
class _Attrs:
    mode: int | None
    size: int | None

    @property
    def ftype(self) -> int:
        return stat.S_IFMT(self.mode) if self.mode is not None else 0


class _Reply:
    """Bounds-checked reader of one SFTP reply: a count or length beyond the reply is an error
    at once (paramiko pads short strings with zeros and loops over any attribute count)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise _GuestError("malformed SFTP reply (shorter than it says)")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self) -> bytes:
        return self.take(self.u32())

    def attrs(self) -> _Attrs:
        flags = self.u32()
        size = (
            int.from_bytes(self.take(8), "big")
            if flags & paramiko.SFTPAttributes.FLAG_SIZE
            else None
        )
        if flags & paramiko.SFTPAttributes.FLAG_UIDGID:
            self.take(8)
        mode = self.u32() if flags & paramiko.SFTPAttributes.FLAG_PERMISSIONS else None
        if flags & paramiko.SFTPAttributes.FLAG_AMTIME:
            self.take(8)
        if flags & paramiko.SFTPAttributes.FLAG_EXTENDED:
            for _ in range(self.u32()):  # each pair needs 8 bytes: a lying count fails fast
                self.string()
                self.string()
        return _Attrs(mode, size)

    def status(self) -> _GuestError:
        code = self.u32()
        text = self.string().decode("utf-8", "replace") if self.pos < len(self.data) else ""
        return _GuestError(text or f"SFTP status {code}", code)


class _Wire:
    """The SFTP requests of a download (and the stats of an upload), with our own bounds.

    paramiko's ``listdir_attr`` reads a directory until the server says it is done (a guest that
    never does exhausts memory), ``get``'s prefetch keeps whatever the server sends per read, and
    its attribute parser loops over any count the server claims. This sends requests through
    paramiko's request machinery (``_async_request``/``_read_response``, the internals its own
    methods use, unchanged since paramiko 1.x) and checks every reply itself.
    """

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self._sftp: Any = sftp
        self._replies: dict[int, tuple[int, bytes]] = {}

    def send(self, t: int, *args: object) -> int:
        try:
            return int(self._sftp._async_request(self, t, *args))
        except (paramiko.SSHException, OSError, EOFError, UnicodeError) as exc:
            raise _GuestError(f"SFTP connection failed: {exc}") from exc

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        """Called by paramiko with the reply to a request we sent."""
        self._replies[num] = (t, msg.get_remainder())

    def reply(self, num: int) -> tuple[int, _Reply]:
        try:
            while num not in self._replies:
                self._sftp._read_response()
        except (paramiko.SSHException, paramiko.SFTPError, OSError, EOFError) as exc:
            raise _GuestError(f"SFTP connection failed: {exc}") from exc
        t, data = self._replies.pop(num)
        return t, _Reply(data)

    def call(self, want: int, t: int, *args: object) -> _Reply:
        """Send one request; its reply of type ``want`` (an error status raises _GuestError)."""
        rt, r = self.reply(self.send(t, *args))
        if rt == CMD_STATUS:
            raise r.status()
        if rt != want:
            raise _GuestError(f"unexpected SFTP reply type {rt}")
        return r

    def stat(self, path: str) -> _Attrs | None:
        try:
            return self.call(CMD_ATTRS, CMD_STAT, path).attrs()
        except _GuestError as exc:
            if exc.code == SFTP_NO_SUCH_FILE:
                return None
            raise

    def realpath(self, path: str) -> bytes:
        r = self.call(CMD_NAME, CMD_REALPATH, path)
        if r.u32() < 1:
            raise _GuestError("empty SFTP realpath reply")
        return r.string()

    def open_read(self, path: str) -> bytes:
        return self.call(
            CMD_HANDLE, CMD_OPEN, path, SFTP_FLAG_READ, paramiko.SFTPAttributes()
        ).string()

    def fstat(self, handle: bytes) -> _Attrs:
        return self.call(CMD_ATTRS, CMD_FSTAT, handle).attrs()

    def close(self, handle: bytes) -> None:
        with contextlib.suppress(_GuestError):
            self.reply(self.send(CMD_CLOSE, handle))

    def readdir(self, path: str) -> Generator[tuple[bytes, _Attrs], None, None]:
        """(raw name, attributes) of each entry, one reply at a time (use with closing())."""
        handle = self.call(CMD_HANDLE, CMD_OPENDIR, path).string()
        try:
            while True:
                try:
                    r = self.call(CMD_NAME, CMD_READDIR, handle)
                except _GuestError as exc:
                    if exc.code == SFTP_EOF:
                        return
                    raise
                count = r.u32()
                if count == 0:  # the protocol says: at least one name, or EOF
                    raise _GuestError("malformed SFTP reply (a directory listing with no names)")
                for _ in range(count):
                    name = r.string()
                    r.string()  # ls -l style "longname": unused
                    yield name, r.attrs()
        finally:
            self.close(handle)


@contextlib.contextmanager
def _in_vm(what: str) -> Iterator[None]:
    """Turn a _GuestError into a one-line AgentSwarmError: '<what> in the VM: <guest text>'."""
    try:
        yield
    except _GuestError as exc:
        raise AgentSwarmError(f"{what} in the VM: {exc}") from exc


@contextlib.contextmanager
def _on_host(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise AgentSwarmError(f"{what}: {exc.strerror or exc}") from exc


def _remote_stat(wire: _Wire, path: str) -> _Attrs | None:
    with _in_vm(f"cannot access {_show(path)}"):
        return wire.stat(path)


# ---------------------------------------------------------------- upload (host -> guest)


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


# ---------------------------------------------------------------- download (guest -> host)


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
