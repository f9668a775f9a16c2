"""What downloads and uploads share: the limits of a copy (documented in ``cp --help``),
checks of the names the guest sends, modes, temporary names, progress lines, and how names and
guest-sent text are shown in messages.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko

from agent_swarm.errors import AgentSwarmError
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


@contextlib.contextmanager
def _on_host(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise AgentSwarmError(f"{what}: {exc.strerror or exc}") from exc
