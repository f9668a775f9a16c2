"""Small filesystem helpers: writes that are never seen half-done."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | str | Callable[[BinaryIO], None],
    *,
    mode: int = 0o644,
    durable: bool = True,
) -> None:
    """Write ``path`` through a temporary file in the same directory and ``os.replace``.

    ``data`` is bytes, text (UTF-8) or a function that writes into the open binary file.
    The file has ``mode`` before any byte is written (so secrets are never readable by
    others, not even briefly).
    """
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        # Windows before Python 3.13 has no fchmod; mode bits mean little there (NTFS ACLs:
        # mkstemp's file in the user's profile is the user's alone), so nothing is lost.
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """A short exclusive OS lock (flock) on ``path``: released by the kernel when the process
    dies, so it can never go stale. Hold it for milliseconds, never across a VM boot."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        else:  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        yield
    finally:
        os.close(fd)
