"""Fixtures for the agent-swarm-vz helper tests: the portable core with its fake backend,
built once per session with CMake and driven over its real Unix socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vz_support import build_vz_helper, write_config

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "native" / "vz"


@pytest.fixture(scope="session")
def vz_helper_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Builds native/vz (fake backend) and returns the agent-swarm-vz binary."""
    return build_vz_helper(tmp_path_factory.mktemp("vz") / "build")


class Client:
    """A line-oriented client of the helper's control socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 1

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("helper closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def send(self, cmd: str, **args: Any) -> int:
        rid = self.next_id
        self.next_id += 1
        self.send_raw((json.dumps({"id": rid, "cmd": cmd, **args}) + "\n").encode())
        return rid

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        rid = self.send(cmd, **args)
        reply = self.read_line()
        assert reply["id"] == rid, reply
        return reply

    def close(self) -> None:
        self.sock.close()


class Helper:
    """One running agent-swarm-vz process (started by a test; killed by PID at teardown)."""

    def __init__(self, proc: subprocess.Popen[bytes], vm_dir: Path, log: Path) -> None:
        self.proc = proc
        self.dir = vm_dir
        self.log = log
        self.socket_path = ""

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / "state.json").read_text())
        return data

    def client(self) -> Client:
        return Client(self.socket_path)

    def wait_state(self, want: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.state()
            if st["state"] == want:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"state {st['state']!r}, wanted {want!r}")
            time.sleep(0.02)

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.log.read_text()


@pytest.fixture
def spawn_helper(vz_helper_bin: Path, tmp_path: Path) -> Iterator[Callable[..., Helper]]:
    """spawn_helper(vm_dir=None, wait=True, env=None, args=(), **fake_knobs) -> Helper;
    ``args`` follow ``run --config VM.json`` (e.g. ``["--restore", path]``)."""
    started: list[Helper] = []

    def spawn(
        vm_dir: Path | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] | list[str] = (),
        **fake: Any,
    ) -> Helper:
        vm_dir = vm_dir or tmp_path / "vm"
        config = write_config(vm_dir, **fake)
        log = vm_dir / f"helper-{len(started)}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [str(vz_helper_bin), "run", "--config", str(config), *args],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env={**os.environ, **(env or {})},
            )
        helper = Helper(proc, vm_dir, log)
        started.append(helper)
        if wait:
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"helper exited {proc.returncode}: {helper.stderr()}")
                try:
                    st = helper.state()
                    helper.socket_path = st["socket"]
                    helper.client().close()
                    break
                except (FileNotFoundError, json.JSONDecodeError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"helper never came up: {helper.stderr()}")
                time.sleep(0.02)
        return helper

    yield spawn
    for helper in started:
        if helper.proc.poll() is None:
            os.kill(helper.proc.pid, signal.SIGKILL)
            helper.proc.wait(timeout=10)
