"""The SFTP wire, read with bounds of our own: requests go out through paramiko's request
machinery, every reply from the (untrusted) guest is parsed here, and a guest error becomes one
short, terminal-safe line.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import paramiko
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_FSTAT,
    CMD_HANDLE,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READDIR,
    CMD_REALPATH,
    CMD_STAT,
    CMD_STATUS,
    SFTP_EOF,
    SFTP_FAILURE,
    SFTP_FLAG_READ,
    SFTP_NO_SUCH_FILE,
)

from agent_swarm.errors import AgentSwarmError
from agent_swarm.ssh.transfer.common import _quote, _show


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


def _remote_stat(wire: _Wire, path: str) -> _Attrs | None:
    with _in_vm(f"cannot access {_show(path)}"):
        return wire.stat(path)
