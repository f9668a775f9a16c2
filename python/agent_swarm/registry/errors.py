"""Registry failures, reported as what they are: SQLite and OS errors mapped to a
:class:`~agent_swarm.errors.RegistryError` that names the cause (a full disk, a permission
problem, another process holding the lock, real corruption) and never calls a healthy registry
corrupt; and the checks made before a registry file is opened (owned by us, not truncated).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

from agent_swarm.errors import RegistryError

# SQLite primary result codes (the low byte of an extended code)
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_AUTH, _SQLITE_FORMAT, _SQLITE_NOTADB = 23, 24, 26


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _mount_point(path: Path) -> Path:
    p = path.resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def _fs_full(directory: Path) -> bool:
    """Less than 1 MiB (or no inode) left for us on the filesystem of ``directory``."""
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return False
    free = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < (1 << 20) or (st.f_files > 0 and st.f_favail == 0)


def _full_error(path: Path, doing: str, detail: str) -> RegistryError:
    mount = _mount_point(path.parent)
    return RegistryError(
        f"cannot {doing} the registry {path}: the filesystem is full ({detail})",
        hint=f"free some space on {mount} (see `df -h {mount}`); nothing was committed to "
        "the registry",
    )


def _access_hint(path: Path) -> str:
    return (
        f"check the ownership and permissions of {path.parent} and of {path.name} (and its "
        "-wal/-shm files), and that the filesystem is not mounted read-only"
    )


def _db_error(exc: sqlite3.Error, path: Path, doing: str) -> RegistryError:
    """The RegistryError for an SQLite failure, by its result code (not every DatabaseError
    means corruption: a full disk or a permission problem leaves a healthy database)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if primary == _SQLITE_FULL or (
        primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN) and _fs_full(path.parent)
    ):
        return _full_error(path, doing, str(exc))
    if primary in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_AUTH, _SQLITE_CANTOPEN):
        return RegistryError(
            f"cannot {doing} the registry {path}: {exc} ({name})", hint=_access_hint(path)
        )
    if primary == _SQLITE_IOERR:
        return RegistryError(
            f"cannot {doing} the registry {path}: {exc} ({name})",
            hint="check the disk and the kernel log (dmesg); the registry file itself may be "
            "fine, so keep it",
        )
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return RegistryError(
            f"cannot {doing} the registry {path}: {exc}",
            hint="another agent-swarm process may hold the registry; try again",
        )
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_FORMAT):
        return RegistryError(
            f"the registry {path} is unreadable: {exc}",
            hint="restore it from a backup, or move it away to start afresh",
        )
    return RegistryError(
        f"cannot {doing} the registry {path}: {exc}",
        hint="run with --debug for details, and report it if the cause is not clear",
    )


def _os_error(exc: OSError, path: Path, doing: str) -> RegistryError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _full_error(path, doing, exc.strerror or str(exc))
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RegistryError(
            f"cannot {doing} the registry {path}: {exc.strerror}", hint=_access_hint(path)
        )
    return RegistryError(
        f"cannot {doing} the registry {path}: {exc.strerror or exc}",
        hint="check that AGENT_SWARM_HOME points to a writable directory",
    )


def _user_name(uid: int) -> str:
    try:
        import pwd

        return f" ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return ""


def _check_owner(path: Path) -> None:
    """Refuse a state directory or registry of another user, before touching anything.

    Without this another user's registry ends in an internal error (chmod fails), or, as
    root, it "works" and leaves root-owned -wal/-shm files that lock its owner out.
    """
    if not hasattr(os, "geteuid"):  # pragma: no cover - Windows
        return
    me = os.geteuid()
    for p in (path.parent, path, _sidecar(path, "-wal"), _sidecar(path, "-shm")):
        try:
            uid = p.stat().st_uid
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _os_error(exc, path, "inspect") from exc
        if uid != me:
            also = "; as root, agent-swarm would leave root-owned files there" if me == 0 else ""
            what = "the state directory " if p == path.parent else ""
            raise RegistryError(
                f"{what}{p} is owned by uid {uid}{_user_name(uid)}, but you are uid {me}"
                f"{_user_name(me)}",
                hint="run agent-swarm as its owner, or set AGENT_SWARM_HOME to a state "
                f"directory of your own{also}",
            )


def _check_not_empty(path: Path) -> None:
    """A 0-byte registry.db is never ours (new ones are renamed into place complete): it was
    truncated or replaced. Opening it would silently forget every VM, so refuse."""
    if path.stat().st_size > 0:
        return
    home = path.parent
    vms = 0
    for sub in ("projects", "tasks"):
        with contextlib.suppress(OSError):
            vms += sum(1 for e in (home / sub).iterdir() if e.is_dir())
    found = f" although {home} has {vms} VM director{'y' if vms == 1 else 'ies'}" if vms else ""
    raise RegistryError(
        f"the registry {path} is empty (0 bytes){found}: it was truncated or replaced "
        "(agent-swarm never leaves it empty)",
        hint="restore registry.db from a backup; only if this state directory never held "
        "VMs, delete the empty file to start afresh",
    )
