"""A real SSH server on 127.0.0.1 (paramiko's server API) whose SFTP subsystem a test chooses.

``sftp_client(make_si)`` starts a server on an ephemeral port in a thread; its SFTP subsystem is
``make_si(server)`` (a paramiko.SFTPServerInterface: a lying guest, or one backed by a local
directory). The client pins the server's freshly generated host key (RejectPolicy: never
AutoAddPolicy) and returns an open paramiko.SFTPClient, as ``agent-swarm cp`` would have.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

MakeSI = Callable[[paramiko.ServerInterface], paramiko.SFTPServerInterface]

_PASSWORD = secrets.token_hex(16)


class _Server(paramiko.ServerInterface):
    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_password(self, username: str, password: str) -> int:
        ok = username == "worker" and password == _PASSWORD
        return AUTH_SUCCESSFUL if ok else AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


@pytest.fixture(scope="session")
def host_key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate()


@pytest.fixture
def sftp_client(host_key: paramiko.PKey) -> Iterator[Callable[[MakeSI], paramiko.SFTPClient]]:
    cleanups: list[Callable[[], None]] = []

    def start(make_si: MakeSI) -> paramiko.SFTPClient:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        transports: list[paramiko.Transport] = []

        def serve() -> None:
            conn, _ = listener.accept()
            t = paramiko.Transport(conn)
            transports.append(t)
            t.add_server_key(host_key)
            t.set_subsystem_handler("sftp", paramiko.SFTPServer, sftp_si=make_si)
            t.start_server(server=_Server())

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.get_host_keys().add(f"[127.0.0.1]:{port}", host_key.get_name(), host_key)
        client.connect(
            "127.0.0.1",
            port=port,
            username="worker",
            password=_PASSWORD,
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
        thread.join(10)

        def stop() -> None:
            client.close()
            for t in transports:
                t.close()
            listener.close()

        cleanups.append(stop)
        return client.open_sftp()

    yield start
    for stop in cleanups:
        stop()


# ---- what the host filesystem looks like, to prove nothing was written where it must not be


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root`` (symlinks not followed): relative path -> type, mode, content."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


class Confinement:
    """Call it to get what changed under ``tmp_path/dst`` (path -> snapshot entry), asserting
    that nothing changed anywhere else under tmp_path or next to it, and that no temp file
    is left. ``rebase()`` after a test set up files outside dst."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rebase()

    def rebase(self) -> None:
        self.before = self._outside(snapshot(self.root))
        self.around = set(os.listdir(self.root.parent))

    @staticmethod
    def _outside(s: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
        return {k: v for k, v in s.items() if k != "dst" and not k.startswith("dst/")}

    def __call__(self) -> dict[str, tuple[object, ...]]:
        after = snapshot(self.root)
        assert self._outside(after) == self.before, "something was written outside dst"
        assert set(os.listdir(self.root.parent)) <= self.around | {self.root.name}
        assert not [k for k in after if ".agent-swarm-" in k], "temp file left behind"
        return {k[4:]: v for k, v in after.items() if k.startswith("dst/")}


@pytest.fixture
def confined(tmp_path: Path) -> Confinement:
    return Confinement(tmp_path)
