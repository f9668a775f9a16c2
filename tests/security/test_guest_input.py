"""Nothing a guest sends, and no name a user types, can break the host side.

* The env file: names the guest's shell owns are refused at `env set`; the file is created
  inside a fresh 0700 directory; the shell deletes it before sourcing it, whatever the file
  holds (real bash and dash, a temp dir standing in for /dev/shm), and exits 125 if it fails.
* The code bridge answers every malformed request (deep nesting, numbers, non-UTF-8, NUL,
  lone surrogates, wrong types) with an error line, keeps serving, and never runs VS Code.
* VM names are RFC 1123 labels (no trailing '-').
* Guest text (cloud-init status, setup.sh log, errors) reaches the terminal without escape
  sequences, bidi overrides or other control characters, and bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent_swarm.errors import AgentSwarmError, InvalidName, InvalidState, SSHError
from agent_swarm.names import validate_env_name, validate_name
from agent_swarm.ssh import envinject
from agent_swarm.ssh.codebridge import CodeBridge

# The guest's login shell is bash; dash and bash in POSIX mode stand for a plain `sh`.
SHELLS = [
    sh for sh in ("/bin/bash", "/bin/dash", "/bin/bash --posix") if os.path.exists(sh.split()[0])
]
SECRET = "s3cr3t-Value"
TRICKY = 'it\'s "quoted" $HOME `id` \\ back\nline two ✓'


# ---- 1. the env file --------------------------------------------------------------------
class LocalSFTP:
    """The few paramiko SFTPClient calls push() makes, on the local filesystem (the temp dir
    stands in for the guest's /dev/shm). Records the calls in order."""

    def __init__(self, calls: list[tuple[Any, ...]], fail_write: bool = False) -> None:
        self.calls = calls
        self.fail_write = fail_write

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        self.calls.append(("mkdir", path, mode))
        os.mkdir(path, mode)

    def open(self, path: str, mode: str = "r", bufsize: int = -1) -> Any:
        self.calls.append(("open", path, mode))
        assert mode == "wx"
        f = open(path, "xb")  # noqa: SIM115 (returned to the caller's with)
        if self.fail_write:

            def write(data: bytes) -> None:
                raise OSError("No space left on device")

            f.write = write  # type: ignore[method-assign, assignment]
        return f

    def chmod(self, path: str, mode: int) -> None:
        self.calls.append(("chmod", path, mode))
        os.chmod(path, mode)

    def remove(self, path: str) -> None:
        self.calls.append(("remove", path))
        os.remove(path)

    def rmdir(self, path: str) -> None:
        self.calls.append(("rmdir", path))
        os.rmdir(path)

    def close(self) -> None:
        pass


class LocalClient:
    def __init__(self, fail_write: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_write = fail_write

    def open_sftp(self) -> LocalSFTP:
        return LocalSFTP(self.calls, self.fail_write)


@pytest.fixture
def shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "shm"
    d.mkdir()
    monkeypatch.setattr(envinject, "ENV_DIR", str(d))
    return d


def guest_shell(sh: str, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` as the guest's sshd runs it: ``$SHELL -c SCRIPT``."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    return subprocess.run(
        [*sh.split(), "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def hand_made_env_file(shm: Path, content: str) -> str:
    """An env file where push() would put one, with ``content`` (a damaged file)."""
    d = shm / f".agent-swarm-env-{uuid.uuid4().hex}"
    d.mkdir(0o700)
    f = d / "env"
    f.write_text(content)
    f.chmod(0o600)
    return str(f)


BAD_ENV_FILES = [
    *[
        (sh, content)
        for sh in SHELLS
        if "bash" in sh
        for content in (
            "export A='x' UID='1' Z='z'\n",  # read-only in bash; later names succeed
            "export BASH_VERSINFO='1' A='z'\n",
        )
    ],
    *[
        (sh, content)
        for sh in SHELLS
        for content in (
            "export A='x' 1B='y'\n",  # not a name: dash exits the shell on it
            "export A='unterminated\n",  # syntax errors
            "export A=$(\n",
            "exit 0\n",
        )
    ],
]


@pytest.mark.parametrize(("sh", "content"), BAD_ENV_FILES)
def test_a_bad_env_file_is_deleted_and_the_command_never_runs(
    sh: str, content: str, shm: Path
) -> None:
    path = hand_made_env_file(shm, content)
    r = guest_shell(sh, envinject.wrap("echo COMMAND-RAN", path))
    assert r.returncode == 125, (r.stdout, r.stderr)
    assert "COMMAND-RAN" not in r.stdout
    assert list(shm.iterdir()) == []  # neither the file nor its directory is left


@pytest.mark.parametrize("sh", SHELLS)
def test_a_good_env_file_reaches_the_command_and_is_gone(sh: str, shm: Path) -> None:
    client = LocalClient()
    path = envinject.push(client, {"A_TOKEN": SECRET, "B": TRICKY})  # type: ignore[arg-type]
    assert path is not None
    script = envinject.wrap(
        'printf "%s|%s|" "$A_TOKEN" "$B"; sh -c \'printf "%s" "$A_TOKEN"\'; '
        "[ -e /dev/fd/3 ] && echo FD3-LEAKED; exit 7",
        path,
    )
    prefix = script.split("\n", 1)[0]
    assert SECRET not in script and "A_TOKEN" not in prefix  # only the file's name
    r = guest_shell(sh, script)
    assert r.returncode == 7, r.stderr  # the command's own exit status
    assert r.stdout == f"{SECRET}|{TRICKY}|{SECRET}"
    assert list(shm.iterdir()) == []


def test_push_makes_a_private_directory_before_the_file(shm: Path) -> None:
    client = LocalClient()
    path = envinject.push(client, {"GITHUB_TOKEN": SECRET})  # type: ignore[arg-type]
    assert path is not None
    d = os.path.dirname(path)
    assert os.path.dirname(d) == str(shm) and d != str(shm)
    # The first thing created is a directory only we can enter: the file's brief default
    # mode (before the chmod) exposes nothing, and no one can open it in that window.
    assert client.calls[0] == ("mkdir", d, 0o700)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Path(path).read_text() == f"export GITHUB_TOKEN={SECRET}\n"


def test_push_leaves_nothing_when_writing_fails(shm: Path) -> None:
    client = LocalClient(fail_write=True)
    with pytest.raises(AgentSwarmError) as ei:
        envinject.push(client, {"GITHUB_TOKEN": SECRET})  # type: ignore[arg-type]
    assert isinstance(ei.value, SSHError)
    assert SECRET not in str(ei.value) and SECRET not in (ei.value.hint or "")
    assert list(shm.iterdir()) == []


def test_wrap_only_accepts_paths_push_makes() -> None:
    good = f"/dev/shm/.agent-swarm-env-{uuid.uuid4().hex}/env"
    rc = envinject.EXIT_ENV_FAILED
    assert envinject.wrap("true", good).endswith(f"3< {good} || exit {rc}\ntrue")
    assert envinject.wrap("true", None) == "true"
    for bad in (
        "/tmp/x; rm -rf ~",
        f"{good}; rm -rf ~",
        f"{good}\n",
        good.replace("/env", "/../../../etc/passwd"),
        good.replace(good.split("-env-")[1][:32], "0123456789ABCDEF" * 2),
        "/dev/shm/.agent-swarm-env-" + "g" * 32 + "/env",
    ):
        with pytest.raises(ValueError, match="not an env file made by push"):
            envinject.wrap("true", bad)


RESERVED = [
    "UID", "EUID", "PPID", "SHELLOPTS", "BASHOPTS", "BASH_VERSINFO", "BASH_ENV", "BASH_FOO",
    "BASHPID", "GROUPS", "FUNCNAME", "RANDOM", "SECONDS", "LINENO", "PIPESTATUS", "OPTIND",
    "IFS", "ENV", "PS1", "PS4", "PROMPT_COMMAND", "POSIXLY_CORRECT", "SHELL", "PATH", "HOME",
]  # fmt: skip


@pytest.mark.parametrize("name", RESERVED)
def test_names_the_guest_shell_owns_are_refused(name: str) -> None:
    with pytest.raises(InvalidName) as ei:
        validate_env_name(name)
    assert name in ei.value.message
    assert ei.value.hint and "another name" in ei.value.hint
    # Removing one stored by an older version stays possible.
    assert validate_env_name(name, reserved_ok=True) == name


@pytest.mark.parametrize("name", ["GITHUB_TOKEN", "uid", "Path", "BASHFUL", "MY_HOME", "IFS2"])
def test_ordinary_names_stay_valid(name: str) -> None:
    assert validate_env_name(name) == name


def test_exports_refuses_a_reserved_name_without_showing_the_value() -> None:
    with pytest.raises(InvalidName) as ei:
        envinject.exports({"OK": "1", "UID": SECRET})
    assert "UID" in ei.value.message and SECRET not in ei.value.message
    assert ei.value.hint and "env rm UID" in ei.value.hint


def test_cli_env_set_refuses_a_reserved_name_before_the_keystore(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    # A keyring backend that fails every call: any keystore access would be exit 1.
    env = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    r = cli("env", "set", "UID", input=SECRET, env=env)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and SECRET not in r.stdout + r.stderr
    assert "UID" in r.stderr and "read-only" in r.stderr and "another name" in r.stderr


# ---- 2. the code bridge ---------------------------------------------------------------
ALIAS = "t1.agent-swarm"
DEEP = 30_000  # 60 KB of brackets: below MAX_REQUEST, far above the recursion limit


@pytest.fixture
def fake_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for VS Code's CLI that records its argv (one line per argument)."""
    record = tmp_path / "argv"
    exe = tmp_path / "code"
    exe.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {record}\n')
    exe.chmod(0o755)
    monkeypatch.setenv("AGENT_SWARM_VSCODE", str(exe))
    return record


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Exceptions that escaped a thread (they would print a traceback on the user's tty)."""
    errors: list[BaseException] = []

    def hook(args: threading.ExceptHookArgs) -> None:
        errors.append(args.exc_value or Exception(str(args.exc_type)))

    monkeypatch.setattr(threading, "excepthook", hook)
    return errors


def ask(bridge: CodeBridge, raw: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(str(bridge.socket_path))
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(4096):
            buf += chunk
        return buf


def request(*items: dict[str, Any]) -> bytes:
    return (json.dumps({"open": list(items)}) + "\n").encode()


BAD_REQUESTS = {
    "deep-list": b"[" * DEEP + b"]" * DEEP + b"\n",
    "deep-inside": b'{"open": ' + b"[" * DEEP + b"]" * DEEP + b"}\n",
    "deep-objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"\n",
    "huge-int": b'{"open": [{"path": "/a", "dir": 1' + b"9" * 20_000 + b"}]}\n",
    "huge-float": b'{"open": [{"path": "/a", "dir": 1e99999}]}\n',
    "nan": b'{"open": [{"path": "/a", "dir": NaN}]}\n',
    "not-utf8": b'{"open": [{"path": "/\xff\xfe", "dir": false}]}\n',
    "nul-in-path": b'{"open": [{"path": "/a\\u0000b", "dir": false}]}\n',
    "raw-nul": b'{"open": [{"path": "/a\x00b", "dir": false}]}\n',
    "lone-surrogate": b'{"open": [{"path": "/a\\ud800", "dir": false}]}\n',
    "dir-not-bool": request({"path": "/a", "dir": 1}),
    "dir-string": request({"path": "/a", "dir": "yes"}),
    "dir-missing": request({"path": "/a"}),
    "path-number": request({"path": 12, "dir": False}),
    "path-list": request({"path": ["/a"], "dir": False}),
    "extra-key": request({"path": "/a", "dir": False, "args": ["--install-extension"]}),
    "top-extra": b'{"open": [{"path": "/a", "dir": false}], "x": 1}\n',
    "open-dict": b'{"open": {"path": "/a", "dir": false}}\n',
    "open-empty": b'{"open": []}\n',
    "too-many": request(*[{"path": f"/p{i}", "dir": False} for i in range(17)]),
    "top-list": b'[{"path": "/a", "dir": false}]\n',
    "top-string": b'"open"\n',
    "two-lines": request({"path": "/a", "dir": False}) + b"{}\n",
    "empty": b"",
}


def test_malformed_requests_get_an_error_and_the_bridge_keeps_serving(
    fake_code: Path, thread_errors: list[BaseException]
) -> None:
    good = request({"path": "/home/worker/src", "dir": True})
    with CodeBridge(ALIAS) as bridge:
        for what, raw in BAD_REQUESTS.items():
            reply = ask(bridge, raw)
            assert reply.endswith(b"\n"), f"{what}: no answer"
            answer = json.loads(reply)
            assert answer["ok"] is False and answer["error"], what
            assert not fake_code.exists(), f"{what}: VS Code ran"
            assert thread_errors == [], what
            assert json.loads(ask(bridge, good)) == {"ok": True}, what  # still serving
            fake_code.unlink()
        # Past MAX_REQUEST the bridge stops reading: the answer may be lost to the reset.
        with contextlib.suppress(ConnectionError):
            ask(bridge, b'{"open": "' + b"a" * (200 * 1024) + b'"}\n')
        assert json.loads(ask(bridge, good)) == {"ok": True}
    assert thread_errors == []


def test_the_good_request_still_opens_what_it_names(fake_code: Path) -> None:
    # Brackets, quotes and backslashes inside strings do not count as nesting.
    odd = '/w/[[[[{{"\\"}}]]'
    with CodeBridge(ALIAS) as bridge:
        reply = ask(bridge, request({"path": "/w/a b", "dir": True}, {"path": odd, "dir": False}))
    assert json.loads(reply) == {"ok": True}
    assert fake_code.read_text().splitlines() == [
        "--folder-uri",
        f"vscode-remote://ssh-remote+{ALIAS}/w/a%20b",
        "--file-uri",
        f"vscode-remote://ssh-remote+{ALIAS}/w/%5B%5B%5B%5B%7B%7B%22%5C%22%7D%7D%5D%5D",
    ]


def test_checks_do_not_depend_on_assert(tmp_path: Path) -> None:
    """Under `python -O` asserts vanish; the checks must not."""
    prog = (
        "import json, sys\n"
        "from agent_swarm.ssh.codebridge import CodeBridge\n"
        "with CodeBridge('t') as b:\n"
        "    for raw in sys.argv[1:]:\n"
        "        try:\n"
        "            print(json.dumps(b.handle_request(raw.encode())))\n"
        "        except Exception as exc:\n"
        "            print(json.dumps({'raised': type(exc).__name__}))\n"
    )
    raws = ['{"open": []}', '{"open": "/etc"}', '{"open": [{"path": "/a", "dir": 1}]}']
    r = subprocess.run(
        [sys.executable, "-O", "-c", prog, *raws],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "AGENT_SWARM_VSCODE": "/bin/true"},
        check=False,
    )
    assert r.returncode == 0, r.stderr
    replies = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(replies) == len(raws)
    assert all(rep.get("ok") is False for rep in replies), replies


# ---- 3. names -------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["a-", "fix-", "-a", "a--", "--x", "a" * 64, "a" * 62 + "-"])
def test_names_must_be_hostname_labels(bad: str) -> None:
    with pytest.raises(InvalidName) as ei:
        validate_name(bad, "task name")
    assert ei.value.hint and "ending with a letter or digit" in ei.value.hint


@pytest.mark.parametrize("ok", ["a", "a-b", "a--b", "0", "9-x-9", "a" * 63, "a" + "-" * 61 + "b"])
def test_hostname_labels_are_valid_names(ok: str) -> None:
    assert validate_name(ok) == ok


def test_the_cli_refuses_new_bad_names_but_reaches_existing_ones(cli) -> None:  # type: ignore[no-untyped-def]
    import click

    from agent_swarm.cli.commands._common import TASK

    assert TASK.convert("a-b", None, None) == "a-b"
    # a VM named under the older rule must stay reachable (stop, delete, ssh)
    assert TASK.convert("fix-", None, None) == "fix-"
    with pytest.raises(click.BadParameter):
        TASK.convert("-fix", None, None)
    # but nothing new gets such a name
    r = cli("project", "create", "web-", "--no-start")
    assert r.returncode == 2, r.stderr
    assert "ending with a letter or digit" in r.stderr and "Traceback" not in r.stderr


# ---- 4. guest text on the terminal ---------------------------------------------------
HOSTILE = (
    "ok \x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\ "
    "\x9b31m c1 \x9d2;t\x9c bell\x07 back\x08\x08 cr\rXX \u202eevil\u202c \u2066iso\u2069 "
    "zw\u200bsp \ufeffbom \x1bc reset \x7f del\u2028sep"
)


def _has_controls(s: str) -> list[str]:
    """Characters a terminal acts on or that reorder text (tab and newline allowed)."""
    import unicodedata

    return [
        c
        for c in s
        if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
    ]


def test_sanitize_removes_everything_a_terminal_would_act_on() -> None:
    from agent_swarm.textsafe import sanitize

    out = sanitize(HOSTILE)
    assert _has_controls(out) == []
    assert "pwned" not in out and "http://evil" not in out  # OSC titles and links dropped
    for visible in ("ok", "c1", "bell", "back", "cr", "XX", "evil", "iso", "zw", "bom", "del"):
        assert visible in out
    assert "\\r" in out and "\\u202e" in out and "\\x1bc" in out  # shown, not acted on


def test_sanitize_bytes_newlines_tabs_and_length() -> None:
    from agent_swarm.textsafe import sanitize

    assert sanitize(b"caf\xc3\xa9 \xff\xfe\n\ta\r\n") == "café \ufffd\ufffd\n\ta\n"
    assert sanitize("a\nb\tc", keep_newlines=False) == "a\\nb\tc"
    long = "x" * 10_000 + "END"
    assert len(sanitize(long, max_len=100)) <= 100
    assert sanitize(long, max_len=100).endswith("…")
    assert sanitize(long, max_len=100, tail=True).endswith("END")
    assert sanitize(long, max_len=100, tail=True).startswith("…")
    assert sanitize("\x1b" * 100_000, max_len=50).count("\\x1b") <= 50 // 4
    assert sanitize("plain text: ünïcødé ✓ 日本語") == "plain text: ünïcødé ✓ 日本語"


@pytest.fixture
def wait_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[str, str], InvalidState]:
    """Run Guest.wait_ready against canned guest output; returns the error it raised."""
    from agent_swarm import guest

    def run(status: str, setup_log: str) -> InvalidState:
        answers = iter([(1, status, ""), (0, setup_log, "")])

        class Session:
            def run(self, command: str, timeout: float) -> tuple[int, str, str]:
                return next(answers)

            def close(self) -> None:
                pass

        provider = SimpleNamespace(guest_session=lambda spec: Session())
        g = guest.Guest(SimpleNamespace(progress=lambda msg: None))  # type: ignore[arg-type]
        spec = SimpleNamespace(kind="project", name="p1", serial_log=Path("/x/serial.log"))
        with pytest.raises(InvalidState) as ei:
            g.wait_ready(provider, spec, "ssh-ed25519 AAAA", "project p1")  # type: ignore[arg-type]
        return ei.value

    return run


def test_wait_ready_error_shows_guest_text_without_control_characters(
    wait_ready: Callable[[str, str], InvalidState],
) -> None:
    exc = wait_ready(
        "status: error\n\x1b]0;owned\x07detail: \u202eboom\n",
        "step 1\n\x1b[31mfailed\x1b[0m \x9b2J\x1b]8;;http://x\x1b\\\n" + "y" * 100_000 + "\n",
    )
    text = exc.message + (exc.hint or "")
    assert _has_controls(text) == []
    assert "status: error" in text and "boom" in text and "failed" in text
    assert "owned" not in text
    assert len(exc.message) < 2000  # a huge log line is cut


def test_doctor_fix_errors_are_clean() -> None:
    from agent_swarm.doctor import Doctor, Finding

    def action() -> None:
        raise SSHError("banner \x1b]0;owned\x07 from the VM \u202e gnp.exe\r\nFAKE: ok")

    core = SimpleNamespace(
        reg=None, layout=None, vms=SimpleNamespace(refresh_ssh_config=lambda: None)
    )
    doc = Doctor(core)  # type: ignore[arg-type]
    f = Finding("x", "project p", "d", "fix it", action)
    doc.fix([f])
    assert f.error is not None and _has_controls(f.error) == []
    assert "owned" not in f.error and "gnp.exe" in f.error
