"""`agent-swarm env` through the real executable, against a real gnome-keyring."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest
from env_helpers import add_project, env_rows, resolve

from tests_support import agent_swarm_cmd

SECRET = "hunter2-Sup3rSecret"
TRICKY = "line one\nline \"two\" with 'quotes' and $HOME `cmd` \\ back\nünïcødé ✓ 日本語 🔑\ttab"


def _clean(r, *values: str) -> None:  # type: ignore[no-untyped-def]
    """No traceback, and none of ``values`` anywhere in the output."""
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    for v in values:
        assert v not in out


def test_set_from_argv_list_json_and_rm(kcli, swarm_home: Path, in_keystore) -> None:  # type: ignore[no-untyped-def]
    r = kcli("env", "set", "GITHUB_TOKEN", SECRET)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Set GITHUB_TOKEN (global).\n"
    # One notice line on stderr: the value is visible in history and the process list.
    assert r.stderr.count("\n") == 1
    assert "shell history" in r.stderr and "process list" in r.stderr and "stdin" in r.stderr
    _clean(r, SECRET)
    assert resolve(swarm_home) == {"GITHUB_TOKEN": SECRET}

    r = kcli("env", "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["NAME", "SCOPE", "GITHUB_TOKEN", "global"]
    _clean(r, SECRET)

    r = kcli("--json", "env", "list")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [
        {"name": "GITHUB_TOKEN", "scope": "global", "project": None, "overrides_global": False}
    ]
    _clean(r, SECRET)

    r = kcli("env", "list", "--check")
    assert r.returncode == 0, r.stderr
    _clean(r, SECRET)

    r = kcli("--json", "env", "rm", "GITHUB_TOKEN")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"removed": "GITHUB_TOKEN", "scope": "global", "project": None}
    assert env_rows(swarm_home) == []

    r = kcli("env", "list")
    assert r.returncode == 0 and r.stdout == "No environment variables.\n"
    assert kcli("--json", "env", "list").stdout.strip() == "[]"


def test_rm_missing_is_not_found(kcli) -> None:  # type: ignore[no-untyped-def]
    r = kcli("env", "rm", "NOPE")
    assert r.returncode == 3
    assert r.stderr.splitlines() == [
        "Error: no environment variable NOPE (global)",
        "Hint: see `agent-swarm env list` for the variables there are",
    ]
    r = kcli("--json", "env", "rm", "NOPE")
    assert r.returncode == 3
    assert json.loads(r.stderr)["exit_code"] == 3


def test_set_from_stdin_keeps_everything_but_one_trailing_newline(
    kcli, swarm_home: Path, in_keystore
) -> None:  # type: ignore[no-untyped-def]
    r = kcli("env", "set", "TRICKY", input=TRICKY + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no command-line warning when the value comes from stdin
    _clean(r, TRICKY, "ünïcødé", "hunter")
    r = kcli("env", "set", "TWO_NL", input="value\n\n")
    assert r.returncode == 0, r.stderr
    r = kcli("env", "set", "CRLF", input="value\r\n")
    assert r.returncode == 0, r.stderr
    r = kcli("env", "set", "NO_NL", input="  spaced  ")
    assert r.returncode == 0, r.stderr
    r = kcli("env", "set", "ARGV_TRICKY", TRICKY)
    assert r.returncode == 0, r.stderr
    _clean(r, TRICKY, "ünïcødé")
    assert resolve(swarm_home) == {
        "ARGV_TRICKY": TRICKY,
        "CRLF": "value",
        "NO_NL": "  spaced  ",
        "TRICKY": TRICKY,
        "TWO_NL": "value\n",
    }


def test_set_replaces_with_a_fresh_nonce(kcli, swarm_home: Path, in_keystore) -> None:  # type: ignore[no-untyped-def]
    assert kcli("env", "set", "A", input="same").returncode == 0
    first = env_rows(swarm_home)
    assert kcli("env", "set", "A", input="same").returncode == 0
    second = env_rows(swarm_home)
    assert len(first) == len(second) == 1
    assert first[0][2] != second[0][2]  # nonce
    assert first[0][3] != second[0][3]  # ciphertext
    assert len(second[0][2]) == 12
    assert kcli("env", "set", "A", input="other").returncode == 0
    assert resolve(swarm_home) == {"A": "other"}


def test_project_overrides_resolve_and_list(kcli, swarm_home: Path, in_keystore) -> None:  # type: ignore[no-untyped-def]
    add_project(swarm_home, "myapp")
    add_project(swarm_home, "other")
    for args, value in (
        (("SHARED",), "global-shared"),
        (("ONLY_GLOBAL",), "global-only"),
        (("SHARED", "--project", "myapp"), "myapp-shared"),
        (("ONLY_MYAPP", "--project", "myapp"), "myapp-only"),
        (("ONLY_OTHER", "--project", "other"), "other-only"),
    ):
        r = kcli("env", "set", *args, input=value)
        assert r.returncode == 0, r.stderr
        _clean(r, value)
    assert resolve(swarm_home) == {"SHARED": "global-shared", "ONLY_GLOBAL": "global-only"}
    assert resolve(swarm_home, "myapp") == {
        "SHARED": "myapp-shared",
        "ONLY_GLOBAL": "global-only",
        "ONLY_MYAPP": "myapp-only",
    }
    assert resolve(swarm_home, "other") == {
        "SHARED": "global-shared",
        "ONLY_GLOBAL": "global-only",
        "ONLY_OTHER": "other-only",
    }

    r = kcli("env", "list", "--project", "myapp")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == [
        "ONLY_GLOBAL  global",
        "ONLY_MYAPP   project myapp",
        "SHARED       project myapp (overrides global)",
    ]
    listed = json.loads(kcli("--json", "env", "list", "--project", "myapp").stdout)
    assert [(e["name"], e["scope"], e["project"], e["overrides_global"]) for e in listed] == [
        ("ONLY_GLOBAL", "global", None, False),
        ("ONLY_MYAPP", "project", "myapp", False),
        ("SHARED", "project", "myapp", True),
    ]
    # Without --project: every variable of every scope.
    listed = json.loads(kcli("--json", "env", "list").stdout)
    assert [(e["name"], e["project"]) for e in listed] == [
        ("ONLY_GLOBAL", None),
        ("SHARED", None),
        ("ONLY_MYAPP", "myapp"),
        ("SHARED", "myapp"),
        ("ONLY_OTHER", "other"),
    ]
    out = kcli("env", "list").stdout + kcli("env", "list", "--project", "other").stdout
    for v in ("global-shared", "myapp-shared", "myapp-only", "other-only", "global-only"):
        assert v not in out

    # Removing the override falls back to the global value; the global one stays.
    r = kcli("env", "rm", "SHARED", "--project", "myapp")
    assert r.returncode == 0 and r.stdout == "Removed SHARED (project myapp).\n"
    assert resolve(swarm_home, "myapp")["SHARED"] == "global-shared"
    r = kcli("env", "rm", "SHARED", "--project", "myapp")
    assert r.returncode == 3
    assert "no environment variable SHARED in project 'myapp'" in r.stderr
    assert "env list --project myapp" in r.stderr


def test_unknown_and_invalid_project(kcli, swarm_home: Path) -> None:  # type: ignore[no-untyped-def]
    for args in (
        ("env", "set", "A", SECRET, "--project", "nope"),
        ("env", "list", "--project", "nope"),
        ("env", "list", "--check", "--project", "nope"),
        ("env", "rm", "A", "--project", "nope"),
    ):
        r = kcli(*args)
        assert r.returncode == 3, (args, r.stderr)
        assert r.stderr.startswith("Error: no project named 'nope'\nHint: "), r.stderr
        _clean(r, SECRET)
    # The project is checked before a value is asked for (stdin is not read).
    r = kcli("env", "set", "A", "--project", "nope", input="")
    assert r.returncode == 3, r.stderr
    r = kcli("env", "set", "A", SECRET, "--project", "Bad_Name")
    assert r.returncode == 2
    assert "invalid project name 'Bad_Name'" in r.stderr
    _clean(r, SECRET)
    assert env_rows(swarm_home) == []


@pytest.mark.parametrize("name", ["1A", "A-B", "A B", "", "A=B", "ÄB"])
def test_invalid_names_are_usage_errors(kcli, swarm_home: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    for args in (("set", name, SECRET), ("rm", name)):
        r = kcli("env", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert "invalid environment variable name" in r.stderr
        assert "[A-Za-z_][A-Za-z0-9_]*" in r.stderr
        _clean(r, SECRET)
    r = kcli("env", "set", name, input=SECRET)
    assert r.returncode == 2
    assert env_rows(swarm_home) == []


def test_empty_value_is_refused(kcli, swarm_home: Path, in_keystore) -> None:  # type: ignore[no-untyped-def]
    import keyring

    from agent_swarm.secrets import KeyringBackend

    for kw in ({"args": ("",)}, {"input": ""}, {"input": "\n"}):
        r = kcli("env", "set", "EMPTY", *kw.get("args", ()), input=kw.get("input"))
        assert r.returncode == 2, (kw, r.stderr)
        assert r.stderr.splitlines()[-2:] == [
            "Error: refusing to store an empty value for EMPTY",
            "Hint: to remove the variable use `agent-swarm env rm EMPTY`",
        ]
        _clean(r)
    r = kcli("env", "set", "NUL", input="a\0b")
    assert r.returncode == 2 and "NUL character" in r.stderr
    raw = subprocess.run(  # bytes that are not UTF-8 on stdin
        [*agent_swarm_cmd(), "env", "set", "BIN"],
        input=b"\xff\xfesecret",
        capture_output=True,
        env={**os.environ, **in_keystore.env, "AGENT_SWARM_HOME": str(swarm_home)},
        timeout=60,
    )
    assert raw.returncode == 2, raw.stderr
    assert b"not valid UTF-8" in raw.stderr and b"Traceback" not in raw.stderr
    assert env_rows(swarm_home) == []
    # Refused before the keystore is touched: no master key was created.
    assert keyring.get_password("agent-swarm", KeyringBackend(swarm_home).username) is None


def test_hidden_prompt_with_confirmation(keystore, swarm_home: Path, in_keystore) -> None:  # type: ignore[no-untyped-def]
    """On a terminal the value is asked twice, never echoed."""
    env = {**os.environ, **keystore.env, "AGENT_SWARM_HOME": str(swarm_home)}
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal and stdio
        argv = [*agent_swarm_cmd(), "env", "set", "PROMPTED"]
        os.execve(argv[0], argv, env)
    out = b""

    def read_until(marker: bytes) -> None:
        nonlocal out
        deadline = time.monotonic() + 30
        while marker not in out:
            assert time.monotonic() < deadline, out
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                assert chunk, out
                out += chunk

    try:
        read_until(b"Value for PROMPTED: ")
        os.write(fd, SECRET.encode() + b"\n")
        read_until(b"Repeat for confirmation: ")
        os.write(fd, SECRET.encode() + b"\n")
        read_until(b"Set PROMPTED (global).")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert SECRET.encode() not in out  # hidden input
    assert resolve(swarm_home) == {"PROMPTED": SECRET}
