"""Fixtures for the secrets tests: a real gnome-keyring on a private D-Bus session bus
(see tests/keystore_support.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for env_helpers (import-mode=importlib)

from keystore_support import Keystore, start_keystore


@pytest.fixture(scope="session")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystore]:
    """One unlocked gnome-keyring on a private bus for the whole session.

    Tests stay independent because every test has its own AGENT_SWARM_HOME, and the master
    key's keystore entry is named after the state directory.
    """
    ks = start_keystore(tmp_path_factory.mktemp("keystore"))
    try:
        yield ks
    finally:
        ks.stop()


@pytest.fixture
def kcli(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    keystore: Keystore,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The real CLI, talking to the private keystore."""
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)

    def run(
        *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # stdin is never the developer's terminal: an empty pipe unless given.
        return cli(*args, input=input or "", env={**keystore.env, **(env or {})})

    return run


@pytest.fixture
def in_keystore(keystore: Keystore, monkeypatch: pytest.MonkeyPatch) -> Keystore:
    """This test process uses the private keystore too (for EnvStore / keyring calls)."""
    import keyring
    from keyring.backends import SecretService

    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    for k, v in keystore.env.items():
        monkeypatch.setenv(k, v)
    # keyring detects its backend once per process; pin the one this keystore provides.
    keyring.set_keyring(SecretService.Keyring())
    return keystore
