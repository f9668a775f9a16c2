"""The per-VM helper ``agent-swarm-vz``: finding it, starting it, talking to it.

One helper process owns one VM (a VZ virtual machine lives as long as the process that made
it, and only a binary signed with ``com.apple.security.virtualization`` may make one). It
serves a JSON-lines control socket (protocol v1, ``native/vz``), keeps ``state.json`` in the
VM's directory current at every transition and holds ``vz.lock`` (flock) while it lives, so
the provider can read every VM's state from files, without a round trip (``list_ours``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_swarm.errors import ProviderError, ProviderUnavailable, Timeout, UnsupportedByProvider

HELPER_ENV = "AGENT_SWARM_VZ_HELPER"
PROTOCOL = 1
LOCK_FILE = "vz.lock"
STATE_FILE = "state.json"
CONFIG_FILE = "vm.json"
LOG_FILE = "helper.log"
MAX_REPLY = 1 << 20  # a reply line longer than this is not our helper's
EXIT_ALREADY_RUNNING = 75


def helper_path() -> Path:
    """The helper binary: ``$AGENT_SWARM_VZ_HELPER`` (tests, a development build) or the one
    shipped in the package (``agent_swarm/bin/agent-swarm-vz``, signed on macOS)."""
    env = os.environ.get(HELPER_ENV)
    if env:
        return Path(env)
    import agent_swarm

    return Path(agent_swarm.__file__).resolve().parent / "bin" / "agent-swarm-vz"


@dataclass(frozen=True, slots=True)
class HelperVersion:
    version: str
    backend: str  # "vz" or "fake"


def helper_version(binary: Path) -> HelperVersion:
    """``agent-swarm-vz --version`` → ``agent-swarm-vz 0.1.0 (backend vz)``."""
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise ProviderUnavailable(
            f"the VM helper {binary} is missing or not executable",
            hint=f"reinstall agent-swarm (the macOS wheel ships it), or set {HELPER_ENV}",
        )
    try:
        out = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
            env=_helper_env(),
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProviderUnavailable(
            f"the VM helper {binary} does not run: {exc}",
            hint="reinstall agent-swarm; on macOS check `codesign -dv` of the helper",
        ) from None
    if len(out) != 4 or out[0] != "agent-swarm-vz" or out[2] != "(backend":
        raise ProviderUnavailable(
            f"{binary} is not an agent-swarm-vz helper", hint=f"unset {HELPER_ENV} or fix it"
        )
    return HelperVersion(out[1], out[3].rstrip(")"))


def _helper_env() -> dict[str, str]:
    """A minimal environment: the helper needs no secrets and gets none."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    for key in ("TMPDIR", "HOME"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


# ---- files: state.json and the lock ----


def lock_holder(vm_dir: Path) -> int | None:
    """The pid of the helper holding ``vz.lock``, or None when no helper lives.

    A shared, non-blocking flock succeeds only when nobody holds the exclusive lock. The
    probe holds it for microseconds; a helper starting in that window exits 75 and
    :func:`spawn` retries it."""
    try:
        fd = os.open(vm_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.read(fd, 32).decode("ascii", "replace").strip()
            return int(raw) if raw.isdigit() and 1 < int(raw) < 2**31 else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def read_state(vm_dir: Path) -> dict[str, Any] | None:
    """``state.json`` as the helper last wrote it (None when missing or unreadable)."""
    try:
        data = json.loads((vm_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---- the control socket ----


class HelperCallError(ProviderError):
    """The helper answered with an error (``code``: its protocol error code)."""

    def __init__(self, message: str, code: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class Control:
    """One connection to a helper's control socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        # Only a socket of ours: where the helper's socket lives in a shared directory (a
        # /tmp fallback), someone else's could sit at the path while ours is gone.
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, f"{path} is not our helper's socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.buf = b""
        self.next_id = 1

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def call(self, cmd: str, *, wait: float = 10.0, **args: Any) -> dict[str, Any]:
        """Send one request (``args`` are its fields); the ``result`` of its reply within
        ``wait`` seconds, or :class:`HelperCallError`."""
        rid = self.next_id
        self.next_id += 1
        self.sock.settimeout(wait)
        self.sock.sendall((json.dumps({"id": rid, "cmd": cmd, **args}) + "\n").encode())
        deadline = time.monotonic() + wait
        while True:
            reply = self._read_line(deadline)
            if reply.get("id") != rid:  # a state event (watch) or an unrelated line
                continue
            if reply.get("ok") is True and isinstance(reply.get("result"), dict):
                result: dict[str, Any] = reply["result"]
                return result
            raw = reply.get("error")
            err: dict[str, Any] = raw if isinstance(raw, dict) else {}
            code = str(err.get("code") or "backend")[:40]
            message = str(err.get("message") or "the helper reported an error")[:500]
            raise HelperCallError(f"{cmd}: {message}", code)

    def _read_line(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from the VM helper")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the VM helper closed the connection")
            self.buf += chunk
            if len(self.buf) > MAX_REPLY:
                raise ConnectionError("the VM helper sent an over-long line")
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            data = json.loads(line)
        except ValueError:
            raise ConnectionError("the VM helper sent malformed JSON") from None
        if not isinstance(data, dict):
            raise ConnectionError("the VM helper sent malformed JSON")
        return data


def control_of(vm_dir: Path, timeout: float = 10.0) -> Control:
    """A connection to the live helper of ``vm_dir`` (its socket path from state.json)."""
    st = read_state(vm_dir) or {}
    path = st.get("socket")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConnectionError("the VM helper has not published its control socket")
    return Control(path, timeout)


def call(vm_dir: Path, cmd: str, *, wait: float = 10.0, **args: Any) -> dict[str, Any]:
    """One request to the live helper of ``vm_dir``; unsupported → UnsupportedByProvider."""
    try:
        with control_of(vm_dir, wait) as c:
            return c.call(cmd, wait=wait, **args)
    except HelperCallError as exc:
        if exc.code == "unsupported":
            why = str(exc).split(": ", 1)[-1]
            raise UnsupportedByProvider(
                f"{cmd} on this host ({why})",
                provider="vz",
                hint="stop the VM first: checkpoints of a stopped VM need no saved state",
            ) from None
        raise
    except (OSError, ConnectionError) as exc:
        raise ProviderError(
            f"the VM helper of {vm_dir.name} does not answer ({cmd}): {exc}",
            hint="`agent-swarm doctor` repairs it",
        ) from None


# ---- starting ----


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the helper in a daemon thread so that it never lingers as a zombie while
    this process lives (it is in its own session and outlives us otherwise)."""
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def log_tail(vm_dir: Path, limit: int = 300) -> str:
    """The last non-empty line of the helper's log (its one-line JSON error, if any)."""
    try:
        lines = [ln for ln in (vm_dir / LOG_FILE).read_text(errors="replace").splitlines() if ln]
    except OSError:
        return ""
    if not lines:
        return ""
    last = lines[-1]
    with contextlib.suppress(ValueError, AttributeError):
        data = json.loads(last)
        last = str(data.get("message") or data.get("error") or last)
    return last[:limit]


def spawn(
    binary: Path,
    vm_dir: Path,
    *,
    restore: Path | None = None,
    paused: bool = False,
    timeout: float = 120.0,
) -> None:
    """Start the helper of ``vm_dir`` in its own session and wait until its VM runs (or,
    with ``paused``, is restored and paused). Raises ProviderError with the helper's own
    error line when it exits or fails."""
    want = "paused" if paused else "running"
    args = [str(binary), "run", "--config", str(vm_dir / CONFIG_FILE)]
    if restore is not None:
        args += ["--restore", str(restore)]
        if paused:
            args.append("--paused")
    for attempt in range(5):
        with open(vm_dir / LOG_FILE, "ab") as log:
            os.chmod(vm_dir / LOG_FILE, 0o600)
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
                start_new_session=True,
                env=_helper_env(),
            )
        _reap(proc)
        deadline = time.monotonic() + timeout
        while True:
            rc = proc.poll()
            st = read_state(vm_dir) or {}
            if rc is None and st.get("pid") == proc.pid:
                if st.get("state") == want:
                    return
                if st.get("state") in ("error", "stopped"):
                    break
            if rc is not None:
                break
            if time.monotonic() > deadline:
                proc.kill()  # Popen's own: never a pid that was already reaped
                raise Timeout(
                    f"the VM {vm_dir.name} did not reach {want!r} within {timeout:.0f} s",
                    hint=f"see {vm_dir / LOG_FILE}",
                )
            time.sleep(0.02)
        rc = proc.wait(timeout=30)
        if rc == EXIT_ALREADY_RUNNING and lock_holder(vm_dir) is None and attempt < 4:
            time.sleep(0.05 * (attempt + 1))  # lost a race with a lock probe: try again
            continue
        if rc == EXIT_ALREADY_RUNNING:
            raise ProviderError(
                f"another helper already runs {vm_dir.name}", hint="`agent-swarm doctor`"
            )
        st = read_state(vm_dir) or {}
        why = st.get("last_error") if st.get("pid") == proc.pid else None
        why = str(why or log_tail(vm_dir) or f"exit status {rc}")[:300]
        raise ProviderError(
            f"the VM {vm_dir.name} failed to start: {why}", hint=f"see {vm_dir / LOG_FILE}"
        )


def run_tool(binary: Path, sub: str, config: Path) -> dict[str, Any]:
    """``agent-swarm-vz init|check-config --config vm.json`` → its JSON output."""
    proc = subprocess.run(
        [str(binary), sub, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_helper_env(),
    )
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        out = {}
    if proc.returncode != 0 and sub != "check-config":
        err = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        with contextlib.suppress(ValueError, AttributeError):
            err = [json.loads(err[0]).get("message", err[0])]
        raise ProviderError(f"agent-swarm-vz {sub} failed: {str(err[0])[:300]}")
    return out if isinstance(out, dict) else {}


def _argv_of(pid: int) -> str | None:
    """The command line of ``pid`` (NUL-separated on Linux, ``ps``'s on macOS), or None."""
    if sys.platform.startswith("linux"):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return None
    try:
        out = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def is_helper_of(pid: int, vm_dir: Path) -> bool:
    """Whether ``pid`` runs ``agent-swarm-vz run --config <vm_dir>/vm.json``."""
    if not 1 < pid < 2**31:
        return False
    argv = _argv_of(pid)
    if argv is None:
        return False
    config = str(vm_dir / CONFIG_FILE)
    if "\0" in argv:
        args = [a for a in argv.split("\0") if a]
        return (
            bool(args)
            and Path(args[0]).name == "agent-swarm-vz"
            and any(a == "--config" and b == config for a, b in itertools.pairwise(args))
        )
    # ps joins the arguments with spaces (the binary's path may hold some itself)
    return f"agent-swarm-vz run --config {config}" in argv


def helper_pid(vm_dir: Path, settle: float = 2.0) -> int | None:
    """The pid of the helper holding ``vz.lock``, checked to be that helper (None: no helper
    lives). The pid in the file is stale for a moment after a crashed helper's successor
    takes the lock (it rewrites the file just after), and a stale pid may by now name any
    process: such a pid is never returned, so never signalled. ProviderError when the holder
    stays unidentified for ``settle`` seconds."""
    deadline = time.monotonic() + settle
    while True:
        pid = lock_holder(vm_dir)
        if pid is None:
            return None
        if pid > 1 and is_helper_of(pid, vm_dir):
            return pid
        if time.monotonic() > deadline:
            raise ProviderError(
                f"the lock of {vm_dir.name} is held by pid {pid or '?'}, which is not its helper",
                hint=f"check that process; remove {vm_dir / LOCK_FILE} only if nothing runs the VM",
            )
        time.sleep(0.02)


def kill_helper(vm_dir: Path, wait: float = 10.0) -> None:
    """SIGTERM (the helper force-stops its VM) and then SIGKILL the lock holder, once it is
    known to be this VM's helper (:func:`helper_pid`)."""
    for sig, grace in ((15, wait), (9, 10.0)):
        pid = helper_pid(vm_dir)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while lock_holder(vm_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    if lock_holder(vm_dir) is not None:
        raise ProviderError(f"the VM helper of {vm_dir.name} does not exit")


def wait_exit(vm_dir: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while lock_holder(vm_dir) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
