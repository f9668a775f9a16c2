"""Is the process that recorded a journal entry still alive? (PID plus start time, so a PID
reused by an unrelated process is not mistaken for the owner.)"""

from __future__ import annotations

import os
import sys


def start_time(pid: int) -> str:
    """An opaque token for when process ``pid`` started ('' when it cannot be read)."""
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return ""
        # Field 22 (starttime), counted after the parenthesised command name.
        fields = stat[stat.rfind(b")") + 2 :].split()
        return fields[19].decode() if len(fields) > 19 else ""
    return "?"  # elsewhere: PID liveness only


def alive(pid: int, token: str) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now = start_time(pid)
    if sys.platform.startswith("linux") and now != token:
        return False
    # A zombie (killed, not yet reaped) is as dead as it gets.
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            if stat[stat.rfind(b")") + 2 :].split()[0] == b"Z":
                return False
        except OSError:
            return False
    return True


def me() -> tuple[int, str]:
    pid = os.getpid()
    return pid, start_time(pid)
