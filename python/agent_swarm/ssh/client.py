"""SSH connections to VMs with the host key pinned (paramiko). Never trust-on-first-use."""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import paramiko

from agent_swarm.errors import SSHError, Timeout
from agent_swarm.models import SSHEndpoint

# paramiko logs connection failures (expected while a VM boots) from its transport thread;
# we report errors ourselves. `--debug` re-enables them through the root logger.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


class HostKeyMismatch(SSHError):
    pass


def _host_key(public_openssh: str) -> paramiko.PKey:
    kind, blob = public_openssh.split()[:2]
    if kind != "ssh-ed25519":
        raise SSHError(f"unsupported pinned host key type {kind}")
    return paramiko.Ed25519Key(data=base64.b64decode(blob))


def connect(
    ep: SSHEndpoint, host_public: str, client_key: Path, *, timeout: float = 10
) -> paramiko.SSHClient:
    """Connect, verifying the server's key against ``host_public`` (raises on mismatch)."""
    client = paramiko.SSHClient()
    host = ep.host if ep.port == 22 else f"[{ep.host}]:{ep.port}"
    client.get_host_keys().add(host, "ssh-ed25519", _host_key(host_public))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            ep.host,
            ep.port,
            username=ep.user,
            pkey=paramiko.Ed25519Key.from_private_key_file(str(client_key)),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyMismatch(
            f"the SSH host key of {ep.host}:{ep.port} does not match the key pinned for this VM "
            f"(got {exc.key.get_name()} {exc.key.fingerprint})",
            hint="something else answers on this port, or the VM's keys were changed; "
            "refusing to connect",
        ) from exc
    except BaseException:
        client.close()
        raise
    return client


_RETRYABLE = (
    OSError,
    EOFError,
    socket.timeout,
    paramiko.SSHException,
    paramiko.ssh_exception.NoValidConnectionsError,
)


def wait_for_ssh(
    ep: SSHEndpoint | Callable[[], SSHEndpoint],
    host_public: str,
    client_key: Path,
    *,
    timeout: float,
    what: str,
    serial_log: Path,
    progress: Callable[[str], None] | None = None,
    alive: Callable[[], bool] | None = None,
) -> paramiko.SSHClient:
    """Retry until SSH answers with the pinned key, within ``timeout`` seconds.

    ``ep`` may be a function: it is asked on every attempt (an address that appears only
    after boot, a DHCP lease, raises :class:`Timeout` until then)."""
    t0 = time.monotonic()
    last_err = "no answer"
    pause = 0.1  # doubling to 1 s: a resumed guest answers within a second or two
    while True:
        pause = min(1.0, pause * 2)
        elapsed = time.monotonic() - t0
        if elapsed > timeout:
            raise Timeout(
                f"{what} did not answer on SSH within {timeout:.0f} s ({last_err})",
                hint=f"see its serial console log: {serial_log}",
            )
        if alive is not None and not alive():
            raise SSHError(
                f"{what} stopped while booting", hint=f"see its serial console log: {serial_log}"
            )
        if progress:
            progress(f"waiting for SSH ({elapsed:.0f}s) {last_console_line(serial_log)}")
        try:
            where = ep() if callable(ep) else ep
        except Timeout as exc:  # no address yet
            last_err = exc.message
            time.sleep(pause)
            continue
        try:
            return connect(where, host_public, client_key, timeout=min(10.0, timeout))
        except HostKeyMismatch:
            raise
        except paramiko.AuthenticationException as exc:
            last_err = f"authentication: {exc}"
        except _RETRYABLE as exc:
            last_err = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        time.sleep(pause)


def last_console_line(serial_log: Path, width: int = 60) -> str:
    """The last non-empty line of a serial log, shortened (for progress lines)."""
    try:
        with open(serial_log, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    for line in reversed(tail.splitlines()):
        clean = "".join(c for c in line if c.isprintable()).strip()
        # drop ANSI remnants like "[  OK  ]" color codes
        clean = clean.replace("[0;32m", "").replace("[0m", "").replace("[0;1;39m", "")
        if clean:
            return "| " + (clean if len(clean) <= width else clean[: width - 1] + "…")
    return ""


def run(
    client: paramiko.SSHClient,
    command: str,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
    tty: bool = False,
    timeout: float | None = None,
) -> int:
    """Run ``command`` in the guest, streaming output; returns its exit status."""
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    transport = client.get_transport()
    if transport is None:
        raise SSHError("the SSH connection is closed")
    chan = transport.open_session(timeout=timeout)
    try:
        if tty:
            chan.get_pty()
        chan.exec_command(command)
        feeder = None
        if stdin is not None:

            def feed() -> None:
                try:
                    while True:
                        data = stdin.read1(65536) if hasattr(stdin, "read1") else stdin.read(65536)
                        if not data:
                            break
                        chan.sendall(data)
                finally:
                    with contextlib.suppress(OSError, EOFError):
                        chan.shutdown_write()

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
        else:
            chan.shutdown_write()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = False
            if chan.recv_ready():
                out.write(chan.recv(65536))
                out.flush()
                got = True
            if chan.recv_stderr_ready():
                err.write(chan.recv_stderr(65536))
                err.flush()
                got = True
            if not got:
                if (
                    chan.exit_status_ready()
                    and not chan.recv_ready()
                    and not (chan.recv_stderr_ready())
                ):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise Timeout(f"command did not finish within {timeout:.0f} s: {command}")
                time.sleep(0.01)
        return chan.recv_exit_status()
    finally:
        chan.close()


def run_capture(
    client: paramiko.SSHClient, command: str, *, timeout: float | None = None
) -> tuple[int, str, str]:
    import io

    o, e = io.BytesIO(), io.BytesIO()
    rc = run(client, command, stdout=o, stderr=e, timeout=timeout)
    return rc, o.getvalue().decode(errors="replace"), e.getvalue().decode(errors="replace")
