"""Where the master key of the encrypted environment variables lives.

:class:`SecretBackend` is the pluggable interface (an OS keystore today; Vault or 1Password
could follow). :class:`KeyringBackend` keeps the key in the OS keystore through the ``keyring``
library: the Secret Service (GNOME Keyring, KWallet) on Linux, the Keychain on macOS, the
Credential Locker on Windows. Backends that would keep the key in a file (``keyrings.alt``
and friends) or that do nothing (``fail``/``null``) are refused: there is no plaintext fallback.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from agent_swarm import paths
from agent_swarm.errors import SecretsError

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend as _Keyring

SERVICE = "agent-swarm"

# Backends that cannot hold a secret, or would hold it in a file next to the data it protects.
_UNUSABLE = ("keyring.backends.fail.", "keyring.backends.null.", "keyring.backends.chainer.")
_INSECURE = ("keyrings.alt.", "keyrings.cryptfile.", "keyring.backends.file.")

_FRIENDLY = {
    "keyring.backends.SecretService.Keyring": "the Secret Service keystore (GNOME Keyring/KWallet)",
    "keyring.backends.libsecret.Keyring": "the Secret Service keystore (libsecret)",
    "keyring.backends.kwallet.DBusKeyring": "KWallet",
    "keyring.backends.macOS.Keyring": "the macOS Keychain",
    "keyring.backends.Windows.WinVaultKeyring": "the Windows Credential Locker",
}

HEADLESS_UNLOCK = (
    "dbus-run-session -- sh -c 'echo -n PASSWORD | gnome-keyring-daemon --unlock "
    "--components=secrets; agent-swarm …'"
)


def keystore_hint() -> str:
    """How to get a usable OS keystore on this platform (one line)."""
    if sys.platform == "darwin":
        return "the macOS Keychain works out of the box: run agent-swarm in your login session"
    if sys.platform == "win32":
        return "the Windows Credential Locker works out of the box: run agent-swarm as your user"
    return (
        "install gnome-keyring and libsecret-1-0 and run inside a desktop (D-Bus) session; "
        f"headless: {HEADLESS_UNLOCK} (macOS Keychain and Windows Credential Locker work "
        "out of the box)"
    )


class SecretBackend(ABC):
    """Stores the 32-byte master key outside the registry."""

    @abstractmethod
    def load_master_key(self) -> bytes | None:
        """The stored key, or None when none was stored yet. Raises :class:`SecretsError`."""

    @abstractmethod
    def store_master_key(self, key: bytes) -> None:
        """Store (or replace) the key. Raises :class:`SecretsError`."""

    @abstractmethod
    def describe(self) -> str:
        """Where the key is kept, for messages (e.g. "the macOS Keychain")."""


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class KeyringBackend(SecretBackend):
    """The master key in the OS keystore, one entry per state directory.

    The entry is service ``agent-swarm``, username ``master-key:<sha256(state dir)[:12]>``
    and the key in base64, so separate ``AGENT_SWARM_HOME``\\ s have separate keys.
    """

    def __init__(self, home: Path | None = None) -> None:
        self.home = home if home is not None else paths.home()
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        self.username = f"master-key:{digest}"
        self._keyring: _Keyring | None = None

    # ---- selection ----
    def _select(self) -> _Keyring:
        """The keyring backend to use; refuses unusable and file-based ones."""
        if self._keyring is not None:
            return self._keyring
        import keyring
        from keyring.backends.chainer import ChainerBackend

        try:
            chosen = keyring.get_keyring()
        except Exception as exc:  # e.g. PYTHON_KEYRING_BACKEND names a missing backend
            raise SecretsError(
                f"cannot load the configured keyring backend: {_first_line(exc)}",
                hint="unset PYTHON_KEYRING_BACKEND (or fix keyringrc.cfg) to use the OS "
                f"keystore; {keystore_hint()}",
            ) from exc
        candidates = list(chosen.backends) if isinstance(chosen, ChainerBackend) else [chosen]
        for cand in candidates:  # a chainer lists its backends best first
            name = _qualname(cand)
            if not name.startswith(_UNUSABLE + _INSECURE):
                self._keyring = cand
                return cand
        insecure = [_qualname(c) for c in candidates if _qualname(c).startswith(_INSECURE)]
        if insecure:
            detail = f"{insecure[0]} keeps secrets in a file: refused"
        else:
            detail = f"keyring backend: {_qualname(chosen)}"
        hint = keystore_hint()
        if os.environ.get("PYTHON_KEYRING_BACKEND"):
            hint = f"unset PYTHON_KEYRING_BACKEND to use the OS keystore; {hint}"
        raise SecretsError(
            "no OS keystore is usable for the master key of the encrypted environment "
            f"variables ({detail})",
            hint=hint,
        )

    def describe(self) -> str:
        try:
            kr = self._select()
        except SecretsError:
            return "the OS keystore (none usable)"
        name = _qualname(kr)
        return _FRIENDLY.get(name, f"the keyring backend {name}")

    # ---- key ----
    def load_master_key(self) -> bytes | None:
        kr = self._select()
        try:
            text = kr.get_password(SERVICE, self.username)
        except Exception as exc:
            raise self._op_error("read the master key from", exc) from exc
        if text is None:
            return None
        try:
            return base64.b64decode(str(text), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SecretsError(
                f"the master key in {self.describe()} ({SERVICE}/{self.username}) is not "
                "valid base64",
                hint="it was changed outside agent-swarm; restore it, or delete that entry "
                "and set every variable again",
            ) from exc

    def store_master_key(self, key: bytes) -> None:
        kr = self._select()
        encoded = base64.b64encode(key).decode("ascii")
        try:
            kr.set_password(SERVICE, self.username, encoded)
        except Exception as exc:
            raise self._op_error("store the master key in", exc, secret=encoded) from exc

    def _op_error(self, action: str, exc: BaseException, secret: str = "") -> SecretsError:
        detail = _first_line(exc)
        if secret:
            detail = detail.replace(secret, "***")
        where = self.describe()
        from keyring.errors import KeyringLocked

        if isinstance(exc, KeyringLocked) or any(
            w in detail.lower() for w in ("locked", "prompt dismissed", "prompt")
        ):
            return SecretsError(
                f"cannot {action} {where}: it is locked and could not be unlocked ({detail})",
                hint="unlock it (log in to the desktop session; headless: echo -n PASSWORD | "
                "gnome-keyring-daemon --unlock --components=secrets) and try again",
            )
        return SecretsError(
            f"cannot {action} {where}: {detail}",
            hint=f"check that the keystore is running and unlocked; {keystore_hint()}",
        )
