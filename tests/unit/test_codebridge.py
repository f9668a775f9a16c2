"""The host end of the in-VM `code` command, driven by the real guest script over a real
Unix socket (the guest side runs here with the same python3 a guest has)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent_swarm.ssh.codebridge import GUEST_SCRIPT, CodeBridge

ALIAS = "t1.agent-swarm"


@pytest.fixture
def fake_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for VS Code's CLI on PATH that records its argv (one line per argument)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv"
    exe = bindir / "code"
    exe.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {record}\n')
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.delenv("AGENT_SWARM_VSCODE", raising=False)
    return record


def guest_code(tmp_path: Path, sock: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "guest-code"
    script.write_text(GUEST_SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AGENT_SWARM_CODE_SOCK": str(sock)},
        check=False,
    )


def test_folder_and_file_open_as_remote_uris(tmp_path: Path, fake_code: Path) -> None:
    folder = tmp_path / "my proj"
    folder.mkdir()
    (folder / "a.py").write_text("x = 1\n")
    with CodeBridge(ALIAS) as bridge:
        assert oct(bridge.socket_path.parent.stat().st_mode & 0o777) == "0o700"
        r = guest_code(tmp_path, bridge.socket_path, str(folder), str(folder / "a.py"))
    assert r.returncode == 0, r.stderr
    assert fake_code.read_text().splitlines() == [
        "--folder-uri",
        f"vscode-remote://ssh-remote+{ALIAS}{str(folder).replace(' ', '%20')}",
        "--file-uri",
        f"vscode-remote://ssh-remote+{ALIAS}{str(folder).replace(' ', '%20')}/a.py",
    ]
    assert not bridge.socket_path.parent.exists()  # closed: the private dir is gone


def test_relative_default_path_is_the_working_directory(tmp_path: Path, fake_code: Path) -> None:
    with CodeBridge(ALIAS) as bridge:
        script = tmp_path / "guest-code"
        script.write_text(GUEST_SCRIPT)
        r = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "AGENT_SWARM_CODE_SOCK": str(bridge.socket_path)},
            check=False,
        )
    assert r.returncode == 0, r.stderr
    assert fake_code.read_text().splitlines()[1].endswith(str(tmp_path))


def test_outside_a_session_the_guest_command_explains(tmp_path: Path) -> None:
    r = guest_code(tmp_path, tmp_path / "no.sock", str(tmp_path))
    assert r.returncode == 1
    assert "agent-swarm ssh" in r.stderr and "Traceback" not in r.stderr


def test_missing_path_and_options_are_refused(tmp_path: Path, fake_code: Path) -> None:
    with CodeBridge(ALIAS) as bridge:
        r = guest_code(tmp_path, bridge.socket_path, str(tmp_path / "absent"))
        assert r.returncode == 1 and "no such file" in r.stderr
        r = guest_code(tmp_path, bridge.socket_path, "--install-extension", "evil")
        assert r.returncode == 1 and "not supported" in r.stderr
    assert not fake_code.exists()


def test_no_vscode_on_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `code` anywhere
    with CodeBridge(ALIAS) as bridge:
        r = guest_code(tmp_path, bridge.socket_path, str(tmp_path))
    assert r.returncode == 1 and "not on the host's PATH" in r.stderr


@pytest.mark.parametrize(
    "raw",
    [
        b"not json\n",
        b'{"open": []}\n',
        b'{"open": [{"path": "relative"}]}\n',
        b'{"open": [{"path": "/a\\nb"}]}\n',
        b'{"open": [{"path": "/x\\u0000"}]}\n',
        b'{"open": "/etc"}\n',
        b"[1]\n",
    ],
)
def test_malformed_requests_run_nothing(raw: bytes, fake_code: Path) -> None:
    with CodeBridge(ALIAS) as bridge:
        assert bridge.handle_request(raw) == {"ok": False, "error": "malformed request"}
        # Over the socket too, with the same answer.
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(bridge.socket_path))
            s.sendall(raw)
            assert b"malformed request" in s.recv(4096)
    assert not fake_code.exists()


def test_vscode_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "codium"
    exe.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 3\n")
    exe.chmod(0o755)
    monkeypatch.setenv("AGENT_SWARM_VSCODE", str(exe))
    with CodeBridge(ALIAS) as bridge:
        r = guest_code(tmp_path, bridge.socket_path, str(tmp_path))
    assert r.returncode == 1
    assert "VS Code exited with 3: cannot open display" in r.stderr


def test_agent_forwarding_is_a_setting_off_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_swarm.ssh import config

    monkeypatch.setenv("AGENT_SWARM_HOME", str(tmp_path))
    monkeypatch.setenv("AGENT_SWARM_FORWARD_AGENT", "yes")  # gone: not read any more
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    es = [
        config.Entry("project", "p1", 2201, key, "p1"),
        config.Entry("task", "t1", 2202, key, "p1"),
    ]

    def forwarding() -> list[str]:
        text = config.render(es)[0]
        return [ln.split()[1] for ln in text.splitlines() if ln.strip().startswith("ForwardAgent")]

    assert forwarding() == ["no", "no"]
    (tmp_path / "config.toml").write_text("[project.p1]\nforward_agent = true\n")
    assert forwarding() == ["yes", "yes"]  # the task follows its project
    (tmp_path / "config.toml").write_text(
        "[ssh]\nforward_agent = true\n[project.p1]\nforward_agent = false\n"
    )
    assert forwarding() == ["no", "no"]
