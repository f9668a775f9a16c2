"""Guest networking for the libvirt provider: isolated by default (passt), host access opt-in.

Isolated (the default)
    Each VM's network is a ``passt`` process (user-mode TCP/IP; started as root it drops to
    ``nobody``). QEMU is the server of a Unix stream socket in a private 0700 directory
    (``-netdev stream,server=on``); once the domain runs, the provider connects to it and
    hands the connected socket to a new passt as a file descriptor (``--fd``), so passt needs
    no file access. passt runs with ``--no-map-gw``: the guest's gateway (10.0.2.2) is *not*
    mapped to the host's loopback, so local services and other VMs' forwarded SSH ports
    (which listen on the host's 127.0.0.1) cannot be reached through it, while connections to
    the outside world are made from the host's network stack like any program's. The only
    inbound path is the VM's forwarded port (host 127.0.0.1:PORT -> guest port 22). DNS:
    queries to 10.0.2.3 are forwarded to the host's resolver. passt exits when QEMU closes
    the connection (the VM powered off); ``start`` on a running VM whose passt died attaches
    a new one.

    Why passt and not QEMU's built-in user network: libslirp maps the gateway to the host's
    loopback and QEMU (7.2) has no switch to turn that off; ``restrict=on`` cuts the outside
    world too; a firewall rule inside the guest would be deleted by the first ``sudo``.
    Known gap (docs/security.md): passt 2023.03 still connects a hand-made packet that a root
    guest addresses to 127.0.0.1 to the host's loopback.

Host access (``--host-access``, ``host_access = true``)
    QEMU's user network (slirp) with the SSH port forwarded: 10.0.2.2:PORT in the guest is
    the host's 127.0.0.1:PORT, the behaviour before isolation existed.

Every guest sees the same plan: address 10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent_swarm import paths
from agent_swarm.errors import ProviderError, ProviderUnavailable
from agent_swarm.fsutil import atomic_write
from agent_swarm.models import VMSpec
from agent_swarm.textsafe import sanitize

GUEST_ADDRESS = "10.0.2.15"
GUEST_PREFIX = 24
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
RUN_DIR = "run"
SOCKET_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin
PASST_START_TIMEOUT = 10.0
ATTACH_TIMEOUT = 10.0  # for QEMU's socket to appear after the domain started
LOG_SIZE = 1 << 20


def isolated(spec: VMSpec) -> bool:
    return spec.network == "user" and not spec.host_access


def passt_binary() -> str | None:
    return shutil.which("passt")


def require_passt() -> str:
    exe = passt_binary()
    if exe is None:
        raise ProviderUnavailable(
            "passt is not installed: it gives VMs an isolated network (no access to this "
            "host's loopback services or other VMs)",
            hint="install it (Debian/Ubuntu: apt install passt; Fedora: dnf install passt), "
            "or create the VM with --host-access to use QEMU's user network instead",
        )
    return exe


def _runtime_dir() -> Path:
    """A private 0700 directory for the per-VM sockets, short enough for sun_path."""
    d = paths.home() / RUN_DIR
    if len(str(d)) + 1 + 20 > SOCKET_MAX:
        d = Path(tempfile.gettempdir()) / f"agent-swarm-{os.getuid()}-{_tag()}"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.lstat()
    if st.st_uid != os.getuid() or (st.st_mode & 0o077):
        raise ProviderError(
            f"{d} is not a private directory of this user",
            hint=f"remove it (it holds only sockets): rm -r {d}",
        )
    return d


def _tag() -> str:
    return hashlib.sha256(str(paths.home()).encode()).hexdigest()[:8]


def _vm_key(spec: VMSpec) -> str:
    return hashlib.sha256(f"{spec.kind}/{spec.name}".encode()).hexdigest()[:16]


def socket_path(spec: VMSpec) -> Path:
    return _runtime_dir() / f"{_vm_key(spec)}.sock"


def pid_path(spec: VMSpec) -> Path:
    return _runtime_dir() / f"{_vm_key(spec)}.pid"


def log_path(spec: VMSpec) -> Path:
    return spec.disk.parent / "passt.log"


def _pid_is_ours(pid: int, spec: VMSpec) -> bool:
    """True if ``pid`` is the passt of this VM (a reused PID is never killed): a passt whose
    forwarded port is this VM's."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    fwd = f"127.0.0.1/{spec.ssh_port}:22".encode()
    return bool(argv) and os.path.basename(argv[0]).startswith(b"passt") and fwd in argv


def _recorded_pid(spec: VMSpec) -> int | None:
    try:
        pid = int(pid_path(spec).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def running_pid(spec: VMSpec) -> int | None:
    pid = _recorded_pid(spec)
    return pid if pid is not None and _pid_is_ours(pid, spec) else None


def _exited(pid: int, spec: VMSpec) -> bool:
    """True once ``pid`` holds none of passt's sockets: gone, a zombie, or another program
    (a reused PID). Not merely "no longer ours": a dying process loses its command line
    before it closes its files, so its forwarded port may still be listening then."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    if not fields or fields[0] in ("Z", "X", "x"):
        return True
    return bool(argv) and not _pid_is_ours(pid, spec)


def _wait_exited(pid: int, spec: VMSpec, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _exited(pid, spec):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop(spec: VMSpec) -> None:
    """Stop this VM's passt (if one runs, or wait for one that is dying to let go of the
    VM's port) and remove its PID file."""
    pid = running_pid(spec)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_exited(pid, spec, 5) and _pid_is_ours(pid, spec):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_exited(pid, spec, 5)
    elif (pid := _recorded_pid(spec)) is not None:
        _wait_exited(pid, spec, 5)
    pid_path(spec).unlink(missing_ok=True)


def passt_argv(exe: str, spec: VMSpec, fd: int, log: Path) -> list[str]:
    return [
        exe,
        "--fd", str(fd),  # the connection to QEMU: passt exits when QEMU closes it
        "--foreground",  # our child (its PID is known), in a session of its own
        "--quiet",
        "--log-file", str(log),
        "--log-size", str(LOG_SIZE),
        "--address", GUEST_ADDRESS,
        "--netmask", str(GUEST_PREFIX),
        "--gateway", GATEWAY,
        "--no-map-gw",  # the point: the gateway is not the host's loopback
        "--dns", DNS,
        "--dns-forward", DNS,  # queries to 10.0.2.3 go to the host's resolver
        "--tcp-ports", f"127.0.0.1/{spec.ssh_port}:22",
        "--udp-ports", "none",
        "--ipv4-only",
    ]  # fmt: skip


def _listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port (read from /proc/net/tcp, no connection)?"""
    loopback = socket.inet_aton("127.0.0.1")
    want = f"{int.from_bytes(loopback, sys.byteorder):08X}:{port:04X}"  # host byte order
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            return any((cols := line.split())[1] == want and cols[3] == "0A" for line in f)
    except OSError:
        return False


def attach(spec: VMSpec) -> int:
    """Connect a new passt to the VM's running QEMU (which listens on the VM's socket);
    returns passt's PID. Stops a previous passt of this VM first.

    QEMU is the server (``-netdev stream,server=on``): its socket is created by QEMU in a
    private directory, and passt receives the connected socket as a file descriptor, so
    passt (which drops to user ``nobody`` when started as root) needs no file access at
    all. When the VM powers off, QEMU closes the connection and passt exits. If passt dies,
    ``start`` on the running VM attaches a new one.
    """
    exe = require_passt()
    stop(spec)
    if _listening(spec.ssh_port):
        raise ProviderError(
            f"127.0.0.1:{spec.ssh_port}, the SSH port of {spec.kind} {spec.name!r}, is in use "
            "by another program",
            hint=f"find it with `ss -ltnp 'sport = :{spec.ssh_port}'` and stop it",
        )
    sock, log = socket_path(spec), log_path(spec)
    err_path = log.with_name("passt.stderr")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + ATTACH_TIMEOUT
    try:
        while True:
            try:
                conn.connect(str(sock))
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() > deadline:
                    raise ProviderError(
                        f"the VM of {spec.kind} {spec.name!r} has no network socket ({sock})",
                        hint="it was defined without an isolated network: recreate it, or "
                        "`agent-swarm doctor --fix`",
                    ) from exc
                time.sleep(0.05)
        for f in (log, err_path):
            with contextlib.suppress(OSError):
                f.unlink()  # passt appends: one log per attachment
        # stderr to a file, not a pipe: passt outlives this command, and a write to a pipe
        # nobody reads any more would kill it (SIGPIPE).
        err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            proc = subprocess.Popen(
                passt_argv(exe, spec, conn.fileno(), log),
                pass_fds=[conn.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err_fd,
                start_new_session=True,  # outlives this command; not hit by its Ctrl-C
            )
        finally:
            os.close(err_fd)
    finally:
        conn.close()  # passt holds its own copy
    atomic_write(pid_path(spec), f"{proc.pid}\n", mode=0o600)
    deadline = time.monotonic() + PASST_START_TIMEOUT
    while not (_listening(spec.ssh_port) and proc.poll() is None):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            try:
                err = err_path.read_bytes()[-4096:].decode(errors="replace")
            except OSError:
                err = ""
            lines = [sanitize(ln, max_len=200) for ln in err.splitlines() if "syslog" not in ln]
            lines = [ln for ln in lines if ln.strip()]
            stop(spec)
            raise ProviderError(
                f"cannot start the network (passt) of {spec.kind} {spec.name!r}: "
                + (lines[-1] if lines else f"exit code {proc.poll()}"),
                hint=f"see {log} and {err_path}",
            )
        time.sleep(0.02)
    return proc.pid


def qemu_netdev(spec: VMSpec, nic_id: str) -> str:
    """The ``-netdev`` argument of this VM (its definition, stable across boots)."""
    if isolated(spec):
        return f"stream,id={nic_id},server=on,addr.type=unix,addr.path={socket_path(spec)}"
    return f"user,id={nic_id},hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
