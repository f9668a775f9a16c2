"""What is stored where: ciphertext in the registry, the key in the keystore, and the failures."""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from env_helpers import add_project, env_rows, resolve, state_bytes, store

from agent_swarm.errors import (
    ConfigError,
    EnvVarNotFound,
    InvalidName,
    ProjectNotFound,
    SecretsError,
)
from agent_swarm.registry import Registry
from agent_swarm.secrets import EnvStore, KeyringBackend, SecretBackend
from agent_swarm.secrets.backend import SERVICE
from keystore_support import base_env, private_session_env, start_keystore
from tests_support import agent_swarm_cmd

VALUES = {
    "GITHUB_TOKEN": "ghp_Q1w2E3r4T5y6U7i8O9p0",
    "MULTI": "-----BEGIN KEY-----\nabc\"def'ghi\n-----END KEY-----",
    "UNICODE": "pässwörd-✓-秘密",
}
PROJECT_VALUE = "project-only-Zx9Yw8Vu7"


def _flip(home: Path, scope: str, name: str, column: str, index: int) -> None:
    con = sqlite3.connect(home / "registry.db")
    with con:
        (blob,) = con.execute(
            f"SELECT {column} FROM env_vars WHERE scope = ? AND name = ?", (scope, name)
        ).fetchone()
        b = bytearray(blob)
        b[index] ^= 0x01
        con.execute(
            f"UPDATE env_vars SET {column} = ? WHERE scope = ? AND name = ?",
            (bytes(b), scope, name),
        )
    con.close()


def _copy_row(home: Path, src: tuple[str, str], dst: tuple[str, str]) -> None:
    con = sqlite3.connect(home / "registry.db")
    with con:
        nonce, ct = con.execute(
            "SELECT nonce, ciphertext FROM env_vars WHERE scope = ? AND name = ?", src
        ).fetchone()
        con.execute(
            "INSERT OR REPLACE INTO env_vars (scope, name, nonce, ciphertext) VALUES (?, ?, ?, ?)",
            (*dst, nonce, ct),
        )
    con.close()


def _error_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in r.stderr
    return [line for line in r.stderr.splitlines() if line.startswith(("Error: ", "Hint: "))]


# ---- where things are stored ----
def test_registry_holds_only_ciphertext(kcli, swarm_home: Path, in_keystore) -> None:  # type: ignore[no-untyped-def]
    add_project(swarm_home, "myapp")
    for name, value in VALUES.items():
        assert kcli("env", "set", name, input=value).returncode == 0
    assert kcli("env", "set", "P", "--project", "myapp", input=PROJECT_VALUE).returncode == 0
    assert resolve(swarm_home, "myapp") == {**VALUES, "P": PROJECT_VALUE}
    secrets = [*VALUES.values(), PROJECT_VALUE, "ghp_Q1w2E3r4", "秘密", "BEGIN KEY"]

    if shutil.which("sqlite3"):
        dump = subprocess.run(
            ["sqlite3", str(swarm_home / "registry.db"), ".dump"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    else:
        con = sqlite3.connect(swarm_home / "registry.db")
        dump = "\n".join(con.iterdump())
        con.close()
    assert dump.count("INSERT INTO env_vars") == 4
    raw = state_bytes(swarm_home)
    assert raw  # the registry (and WAL, if any) were read
    for s in secrets:
        assert s not in dump
        assert s.encode() not in raw
        assert base64.b64encode(s.encode()) not in raw

    # The master key is in the keystore, not under the state directory in any encoding.
    key = KeyringBackend(swarm_home).load_master_key()
    assert key is not None and len(key) == 32
    for form in (key, base64.b64encode(key), key.hex().encode()):
        assert form not in raw


def test_master_key_lives_in_the_keystore(
    kcli, swarm_home: Path, tmp_path: Path, in_keystore
) -> None:  # type: ignore[no-untyped-def]
    import keyring

    assert kcli("env", "set", "A", input="one").returncode == 0
    user = KeyringBackend(swarm_home).username
    assert user.startswith("master-key:") and len(user) == len("master-key:") + 12
    stored = keyring.get_password(SERVICE, user)
    assert stored is not None and len(base64.b64decode(stored)) == 32

    if shutil.which("secret-tool"):
        r = subprocess.run(
            ["secret-tool", "search", "--all", "service", SERVICE],
            capture_output=True,
            text=True,
            env=base_env(in_keystore.env),
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        out = r.stdout + r.stderr
        assert f"attribute.username = {user}" in out
        assert f"secret = {stored}" in out

    # Another state directory gets its own key, under its own entry.
    other = tmp_path / "other-home"
    assert (
        kcli("env", "set", "A", input="two", env={"AGENT_SWARM_HOME": str(other)}).returncode == 0
    )
    other_user = KeyringBackend(other).username
    assert other_user != user
    other_key = keyring.get_password(SERVICE, other_user)
    assert other_key is not None and other_key != stored
    assert resolve(swarm_home) == {"A": "one"}
    assert resolve(other) == {"A": "two"}
    # ... so a registry row carried over to the other state directory does not decrypt there.
    con = sqlite3.connect(other / "registry.db")
    with con:
        con.execute("DELETE FROM env_vars")
        for scope, name, nonce, ct in env_rows(swarm_home):
            con.execute(
                "INSERT INTO env_vars (scope, name, nonce, ciphertext) VALUES (?, ?, ?, ?)",
                (scope, name, nonce, ct),
            )
    con.close()
    with pytest.raises(SecretsError, match="master key changed"):
        resolve(other)


# ---- tampering ----
@pytest.mark.parametrize(("column", "index"), [("ciphertext", 0), ("ciphertext", -1), ("nonce", 5)])
def test_flipped_byte_is_a_clear_error(
    kcli, swarm_home: Path, in_keystore, column: str, index: int
) -> None:  # type: ignore[no-untyped-def]
    add_project(swarm_home, "myapp")
    assert kcli("env", "set", "TOKEN", input=VALUES["GITHUB_TOKEN"]).returncode == 0
    assert kcli("env", "set", "OK", input="fine").returncode == 0
    assert kcli("env", "set", "PTOKEN", "--project", "myapp", input="p").returncode == 0
    _flip(swarm_home, "", "TOKEN", column, index)

    r = kcli("env", "list", "--check")
    assert r.returncode == 1
    assert _error_lines(r) == [
        "Error: cannot decrypt TOKEN (scope global): the value was tampered with or the "
        "master key changed",
        "Hint: set it again: `agent-swarm env set TOKEN`",
    ]
    assert VALUES["GITHUB_TOKEN"] not in r.stdout + r.stderr
    r = kcli("--json", "env", "list", "--check")
    assert r.returncode == 1 and '"exit_code": 1' in r.stderr
    with pytest.raises(SecretsError, match=r"cannot decrypt TOKEN \(scope global\)") as exc:
        resolve(swarm_home, "myapp")
    assert exc.value.hint == "set it again: `agent-swarm env set TOKEN`"
    assert VALUES["GITHUB_TOKEN"] not in str(exc.value)
    # Listing names needs no decryption; setting it again repairs it.
    assert kcli("env", "list").returncode == 0
    assert kcli("env", "set", "TOKEN", input="new").returncode == 0
    assert resolve(swarm_home, "myapp") == {"TOKEN": "new", "OK": "fine", "PTOKEN": "p"}

    _flip(swarm_home, "myapp", "PTOKEN", column, index)
    r = kcli("env", "list", "--check", "--project", "myapp")
    assert r.returncode == 1
    assert _error_lines(r) == [
        "Error: cannot decrypt PTOKEN (scope project myapp): the value was tampered with or "
        "the master key changed",
        "Hint: set it again: `agent-swarm env set PTOKEN --project myapp`",
    ]


def test_ciphertext_copied_to_another_name_or_scope_fails(
    kcli, swarm_home: Path, in_keystore
) -> None:  # type: ignore[no-untyped-def]
    add_project(swarm_home, "myapp")
    add_project(swarm_home, "other")
    assert kcli("env", "set", "A", input="value-of-a").returncode == 0
    assert kcli("env", "set", "B", input="value-of-b").returncode == 0
    assert kcli("env", "set", "A", "--project", "myapp", input="myapp-a").returncode == 0

    _copy_row(swarm_home, ("", "A"), ("", "B"))  # another name, same scope
    with pytest.raises(SecretsError, match=r"cannot decrypt B \(scope global\)"):
        resolve(swarm_home)
    assert kcli("env", "set", "B", input="value-of-b").returncode == 0
    assert resolve(swarm_home) == {"A": "value-of-a", "B": "value-of-b"}

    _copy_row(swarm_home, ("", "A"), ("myapp", "A"))  # same name, another scope (replaces)
    with pytest.raises(SecretsError, match=r"cannot decrypt A \(scope project myapp\)"):
        resolve(swarm_home, "myapp")
    _copy_row(swarm_home, ("", "A"), ("other", "A"))  # same name, new row in another scope
    r = kcli("env", "list", "--check", "--project", "other")
    assert r.returncode == 1
    assert _error_lines(r)[0].startswith("Error: cannot decrypt A (scope project other)")
    # The untouched global value still decrypts.
    assert resolve(swarm_home)["A"] == "value-of-a"


def test_changed_master_key_is_reported(kcli, swarm_home: Path, in_keystore) -> None:  # type: ignore[no-untyped-def]
    assert kcli("env", "set", "A", input="x").returncode == 0
    KeyringBackend(swarm_home).store_master_key(os.urandom(32))
    r = kcli("env", "list", "--check")
    assert r.returncode == 1
    assert "the value was tampered with or the master key changed" in r.stderr


def test_lost_master_key_is_not_silently_replaced(kcli, swarm_home: Path, in_keystore) -> None:  # type: ignore[no-untyped-def]
    import keyring

    assert kcli("env", "set", "A", input="x").returncode == 0
    keyring.delete_password(SERVICE, KeyringBackend(swarm_home).username)
    r = kcli("env", "set", "B", input="y")
    assert r.returncode == 1
    lines = _error_lines(r)
    assert lines[0].startswith("Error: the master key is not in the Secret Service keystore")
    assert "holds 1 encrypted environment variable(s)" in lines[0]
    assert "env rm" in lines[1]
    with pytest.raises(SecretsError, match="master key is not in"):
        resolve(swarm_home)
    assert [row[1] for row in env_rows(swarm_home)] == ["A"]
    # Removing what can no longer be decrypted lets a new key be made.
    assert kcli("env", "rm", "A").returncode == 0
    assert kcli("env", "set", "B", input="y").returncode == 0
    assert resolve(swarm_home) == {"B": "y"}


def test_concurrent_first_sets_share_one_key(keystore, swarm_home: Path, in_keystore) -> None:  # type: ignore[no-untyped-def]
    env = {**base_env(keystore.env), "AGENT_SWARM_HOME": str(swarm_home)}
    procs = [
        subprocess.Popen(
            [*agent_swarm_cmd(), "env", "set", f"V{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for i in range(4)
    ]
    for i, p in enumerate(procs):
        _, err = p.communicate(f"value-{i}".encode(), timeout=120)
        assert p.returncode == 0, err
    assert resolve(swarm_home) == {f"V{i}": f"value-{i}" for i in range(4)}


# ---- no usable keystore ----
class ExplodingBackend(SecretBackend):
    """Fails the test if the keystore is touched at all."""

    def load_master_key(self) -> bytes | None:
        raise AssertionError("the keystore was used")

    def store_master_key(self, key: bytes) -> None:
        raise AssertionError("the keystore was used")

    def describe(self) -> str:
        return "nothing"


@pytest.fixture
def no_keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A session whose bus address points at nothing (and no keyring config)."""
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    env = private_session_env(tmp_path / "nokeystore")
    env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={tmp_path}/no-such-bus"
    return env


def test_no_keystore_is_a_one_line_error(cli, swarm_home: Path, no_keystore) -> None:  # type: ignore[no-untyped-def]
    secret = VALUES["GITHUB_TOKEN"]
    for kw in ({"args": (secret,)}, {"input": secret}):
        r = cli("env", "set", "A", *kw.get("args", ()), input=kw.get("input"), env=no_keystore)
        assert r.returncode == 1, r.stderr
        lines = _error_lines(r)
        # keyring found nothing, or (with keyrings.alt installed) only a file it refuses.
        assert lines[0] in (
            "Error: no OS keystore is usable for the master key of the encrypted environment "
            "variables (keyring backend: keyring.backends.fail.Keyring)",
            "Error: no OS keystore is usable for the master key of the encrypted environment "
            "variables (keyrings.alt.file.PlaintextKeyring keeps secrets in a file: refused)",
        )
        assert lines[1:] == [
            "Hint: install gnome-keyring and libsecret-1-0 and run inside a desktop (D-Bus) "
            "session; headless: dbus-run-session -- sh -c 'echo -n PASSWORD | "
            "gnome-keyring-daemon --unlock --components=secrets; agent-swarm …' (macOS "
            "Keychain and Windows Credential Locker work out of the box)",
        ]
        assert secret not in r.stdout + r.stderr
        assert env_rows(swarm_home) == []
    # Names can still be listed and removed; nothing to decrypt needs no keystore.
    r = cli("env", "list", "--check", env=no_keystore)
    assert r.returncode == 0 and r.stdout == "No environment variables.\n"
    with Registry(swarm_home / "registry.db") as reg:
        assert EnvStore(reg, ExplodingBackend()).resolve(None) == {}


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("keyring.backends.null.Keyring", "no OS keystore is usable"),
        ("keyring.backends.fail.Keyring", "no OS keystore is usable"),
        ("no_such_module.Keyring", "cannot load the configured keyring backend"),
        ("keyrings.alt.file.PlaintextKeyring", "PlaintextKeyring keeps secrets in a file"),
    ],
)
def test_unusable_configured_backends_are_refused(
    cli, swarm_home: Path, no_keystore, backend: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    if backend.startswith("keyrings.alt."):
        pytest.importorskip("keyrings.alt")  # in the [test] extra
    r = cli(
        "env",
        "set",
        "A",
        input="secret-value",
        env={**no_keystore, "PYTHON_KEYRING_BACKEND": backend},
    )
    assert r.returncode == 1
    lines = _error_lines(r)
    assert len(lines) == 2 and message in lines[0], lines
    assert lines[1].startswith("Hint: unset PYTHON_KEYRING_BACKEND")
    assert "secret-value" not in r.stderr
    assert env_rows(swarm_home) == []
    # Nothing was written anywhere, in particular no keyring file.
    session_files = [p for p in Path(no_keystore["HOME"]).parent.rglob("*") if p.is_file()]
    assert session_files == []


def test_a_chainer_uses_the_os_keystore_not_the_file(keystore, swarm_home: Path) -> None:  # type: ignore[no-untyped-def]
    """With keyrings.alt installed keyring chains the Secret Service and a plaintext file:
    agent-swarm takes the keystore from the chain and never falls back to the file."""
    pytest.importorskip("keyrings.alt")
    code = (
        "import keyring\n"
        "from agent_swarm.secrets import KeyringBackend\n"
        "kb = KeyringBackend()\n"
        "print(type(keyring.get_keyring()).__name__)\n"
        "print(kb.describe())\n"
        "kb.store_master_key(bytes(32)); print(kb.load_master_key() == bytes(32))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**base_env(keystore.env), "AGENT_SWARM_HOME": str(swarm_home)},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "ChainerBackend",
        "the Secret Service keystore (GNOME Keyring/KWallet)",
        "True",
    ]
    assert not list(Path(keystore.env["XDG_DATA_HOME"]).glob("python_keyring/*"))


def test_locked_keystore_is_a_clear_error(
    cli, swarm_home: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A gnome-keyring that was never unlocked (and cannot prompt) is reported as such."""
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    ks = start_keystore(tmp_path / "locked", unlock=False)
    try:
        r = cli("env", "set", "A", input="secret-value", env=ks.env)
    finally:
        ks.stop()
    assert r.returncode == 1
    lines = _error_lines(r)
    assert lines[0].startswith(
        "Error: cannot read the master key from the Secret Service keystore (GNOME "
        "Keyring/KWallet): it is locked and could not be unlocked"
    ), lines
    assert "gnome-keyring-daemon --unlock" in lines[1]
    assert "secret-value" not in r.stderr
    assert env_rows(swarm_home) == []
    for p in (ks.bus, ks.keyring):
        assert p is not None and p.poll() is not None  # teardown stopped exactly these


# ---- the library API and the registry methods ----
class MemoryBackend(SecretBackend):
    """A SecretBackend held in memory: the pluggable interface used by the API tests."""

    def __init__(self) -> None:
        self.key: bytes | None = None
        self.stores = 0

    def load_master_key(self) -> bytes | None:
        return self.key

    def store_master_key(self, key: bytes) -> None:
        self.key = key
        self.stores += 1

    def describe(self) -> str:
        return "memory"


def test_envstore_api_with_a_pluggable_backend(tmp_path: Path) -> None:
    add_project(tmp_path, "myapp")
    backend = MemoryBackend()
    with Registry(tmp_path / "registry.db") as reg:
        s = EnvStore(reg, backend)
        assert s.resolve("myapp") == {} and backend.stores == 0  # nothing to decrypt: no key
        s.set("A", "global-a")
        s.set("A", "myapp-a", project="myapp")
        s.set("B", "global-b")
        assert backend.stores == 1 and backend.key is not None and len(backend.key) == 32
        assert s.resolve(None) == {"A": "global-a", "B": "global-b"}
        assert s.resolve("myapp") == {"A": "myapp-a", "B": "global-b"}
        assert [(i.name, i.project, i.overrides_global) for i in s.list("myapp")] == [
            ("A", "myapp", True),
            ("B", None, False),
        ]
        assert s.verify() == 3 and s.verify("myapp") == 2
        with pytest.raises(ProjectNotFound):
            s.set("A", "x", project="nope")
        with pytest.raises(ProjectNotFound):
            s.resolve("nope")
        with pytest.raises(InvalidName):
            s.set("1A", "x")
        with pytest.raises(ConfigError, match="empty value"):
            s.set("A", "")
        with pytest.raises(ConfigError, match="at most"):
            s.set("BIG", "x" * (128 * 1024))
        with pytest.raises(EnvVarNotFound):
            s.remove("C")
        s.remove("A", project="myapp")
        assert s.resolve("myapp") == {"A": "global-a", "B": "global-b"}
        backend.key = b"short"
        with pytest.raises(SecretsError, match="has 5 bytes"):
            s.resolve(None)


def test_registry_env_methods(tmp_path: Path) -> None:
    add_project(tmp_path, "myapp")
    with Registry(tmp_path / "registry.db") as reg:
        reg.put_env_var("", "A", b"n" * 12, b"c1")
        reg.put_env_var("", "A", b"m" * 12, b"c2")  # replaces
        reg.put_env_var("myapp", "A", b"o" * 12, b"c3")
        rec = reg.get_env_var("", "A")
        assert (rec.nonce, rec.ciphertext) == (b"m" * 12, b"c2") and rec.updated_at
        assert [(r.scope, r.name) for r in reg.list_env_vars()] == [("", "A"), ("myapp", "A")]
        assert [r.scope for r in reg.list_env_vars(["myapp"])] == ["myapp"]
        assert reg.count_env_vars() == 2
        with pytest.raises(ProjectNotFound):
            reg.put_env_var("nope", "A", b"n" * 12, b"c")
        with pytest.raises(ProjectNotFound):
            reg.list_env_vars(["", "nope"])
        with pytest.raises(InvalidName):
            reg.put_env_var("", "A-B", b"n" * 12, b"c")
        with pytest.raises(EnvVarNotFound, match="no environment variable B"):
            reg.get_env_var("", "B")
        with pytest.raises(EnvVarNotFound, match="in project 'myapp'"):
            reg.remove_env_var("myapp", "B")
        # Deleting a project deletes its variables, not the global ones.
        reg.remove_project("myapp")
        assert [(r.scope, r.name) for r in reg.list_env_vars()] == [("", "A")]


def test_store_for_this_home_is_keyring_backed(swarm_home: Path) -> None:
    s, reg = store(swarm_home)
    try:
        assert isinstance(s.backend, KeyringBackend)
        assert s.backend.username == KeyringBackend(swarm_home).username
    finally:
        reg.close()
