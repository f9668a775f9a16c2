"""A private D-Bus session bus with a real gnome-keyring (Secret Service), for tests.

The bus runs from our own config (no service directories, so nothing is D-Bus-activated
behind our back) on a socket in a private temporary directory; gnome-keyring-daemon runs in
the foreground on that bus with its own HOME/XDG_* directories, its login keyring unlocked
with a password fed on stdin. The developer's real keyring and session bus are never touched.
Teardown terminates exactly the two processes started here.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PASSWORD = "test-keyring-password"
SECRET_SERVICE = "org.freedesktop.secrets"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

# Variables that could lead keyring/gnome-keyring to the developer's real session.
_SCRUB = (
    "DBUS_SESSION_BUS_ADDRESS",
    "PYTHON_KEYRING_BACKEND",
    "GNOME_KEYRING_CONTROL",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_RUNTIME_DIR",
    "XDG_CACHE_HOME",
)


def _missing_binaries() -> list[str]:
    return [b for b in ("dbus-daemon", "gnome-keyring-daemon") if shutil.which(b) is None]


def private_session_env(root: Path) -> dict[str, str]:
    """HOME and XDG_* directories under ``root`` (created)."""
    env = {
        "HOME": str(root / "home"),
        "XDG_CONFIG_HOME": str(root / "config"),
        "XDG_DATA_HOME": str(root / "data"),
        "XDG_CACHE_HOME": str(root / "cache"),
        "XDG_RUNTIME_DIR": str(root / "run"),
    }
    for d in env.values():
        Path(d).mkdir(mode=0o700, parents=True, exist_ok=True)
    return env


def base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(extra)
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Keystore:
    """A running private session bus (and, unless ``keyring`` is None, gnome-keyring)."""

    env: dict[str, str]  # DBUS_SESSION_BUS_ADDRESS, HOME, XDG_* for clients
    bus: subprocess.Popen[bytes]
    keyring: subprocess.Popen[bytes] | None
    sockdir: Path

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self.bus, self.keyring) if p is not None]

    def stop(self) -> None:
        if self.keyring is not None:
            _stop(self.keyring)
        _stop(self.bus)
        shutil.rmtree(self.sockdir, ignore_errors=True)


def _wait_for_secret_service(env: dict[str, str], proc: subprocess.Popen[bytes]) -> None:
    """Until the daemon owns org.freedesktop.secrets and its default collection exists."""
    import secretstorage

    deadline = time.monotonic() + 30
    old = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    os.environ["DBUS_SESSION_BUS_ADDRESS"] = env["DBUS_SESSION_BUS_ADDRESS"]
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"gnome-keyring-daemon exited {proc.returncode}: {err}")
            try:
                conn = secretstorage.dbus_init()
                try:
                    if secretstorage.check_service_availability(conn):
                        coll = secretstorage.get_default_collection(conn)
                        if not coll.is_locked():
                            return
                finally:
                    conn.close()
            except secretstorage.exceptions.SecretStorageException:
                pass
            time.sleep(0.1)
        raise RuntimeError("gnome-keyring-daemon did not come up within 30 s")
    finally:
        if old is None:
            del os.environ["DBUS_SESSION_BUS_ADDRESS"]
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = old


def start_keystore(root: Path, *, unlock: bool = True) -> Keystore:
    """Start a private bus and gnome-keyring-daemon (its login keyring unlocked or not)."""
    missing = _missing_binaries()
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (Debian: gnome-keyring, dbus)")
    env = private_session_env(root)
    # A short socket path: Unix sockets are limited to ~108 bytes.
    sockdir = Path(tempfile.mkdtemp(prefix="as-bus-", dir="/tmp"))
    socket = sockdir / "bus"
    conf = root / "bus.conf"
    conf.write_text(BUS_CONFIG.format(socket=socket))
    bus = subprocess.Popen(
        ["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address=1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=base_env(env),
    )
    ready, _, _ = select.select([bus.stdout], [], [], 30)
    address = bus.stdout.readline().decode().strip() if ready and bus.stdout else ""
    if not address:
        _stop(bus)
        shutil.rmtree(sockdir, ignore_errors=True)
        raise RuntimeError("dbus-daemon did not print its address")
    env["DBUS_SESSION_BUS_ADDRESS"] = address
    argv = ["gnome-keyring-daemon", "--foreground", "--components=secrets"]
    if unlock:
        argv.append("--unlock")
    keyring = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=base_env(env),
    )
    assert keyring.stdin is not None
    if unlock:
        keyring.stdin.write(PASSWORD.encode())
    keyring.stdin.close()
    ks = Keystore(env=env, bus=bus, keyring=keyring, sockdir=sockdir)
    try:
        if unlock:
            _wait_for_secret_service(env, keyring)
        else:
            _wait_for_name(env, keyring)
    except BaseException:
        ks.stop()
        raise
    return ks


def _wait_for_name(env: dict[str, str], proc: subprocess.Popen[bytes]) -> None:
    """Until the (locked) daemon owns org.freedesktop.secrets."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gnome-keyring-daemon exited {proc.returncode}")
        r = subprocess.run(
            [
                "dbus-send",
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
                f"string:{SECRET_SERVICE}",
            ],
            capture_output=True,
            text=True,
            env=base_env(env),
            timeout=10,
        )
        if "boolean true" in r.stdout:
            return
        time.sleep(0.1)
    raise RuntimeError("gnome-keyring-daemon did not take its D-Bus name within 30 s")
