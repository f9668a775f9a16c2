"""Encrypted environment variables: AES-256-GCM in the registry, the key in a SecretBackend.

Each value is encrypted with a fresh random 96-bit nonce under a 32-byte master key that
never touches the disk (it lives in the backend, e.g. the OS keystore). The associated data
binds the ciphertext to its scope and name, so a row copied to another variable or project
fails authentication instead of decrypting to the wrong place.

Global variables have scope ``''``; a project's overrides have the project name as scope.
Nothing here ever puts a value into an exception message.
"""

from __future__ import annotations

import builtins
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent_swarm.errors import ConfigError, SecretsError
from agent_swarm.models import EnvVarRecord
from agent_swarm.names import validate_env_name, validate_existing_name
from agent_swarm.registry import Registry
from agent_swarm.secrets.backend import KeyringBackend, SecretBackend

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits, the GCM standard nonce
AAD_PREFIX = b"agent-swarm/env/v1\0"
# Linux refuses a single environment string longer than MAX_ARG_STRLEN (128 KiB).
MAX_VALUE_BYTES = 128 * 1024 - 1


def associated_data(scope: str, name: str) -> bytes:
    """What each ciphertext is bound to: format version, scope ('' = global) and name."""
    return AAD_PREFIX + scope.encode() + b"\0" + name.encode()


@dataclass(frozen=True, slots=True)
class EnvVarInfo:
    """A variable's name and where it comes from (never its value)."""

    name: str
    project: str | None  # None: global
    overrides_global: bool = False  # a project value shadowing a global one of the same name

    @property
    def scope(self) -> str:
        return "global" if self.project is None else "project"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "project": self.project,
            "overrides_global": self.overrides_global,
        }


def _scope_of(project: str | None) -> str:
    return "" if project is None else validate_existing_name(project, "project name")


def _where(scope: str) -> str:
    return "global" if scope == "" else f"project {scope}"


def _set_cmd(name: str, scope: str) -> str:
    return f"agent-swarm env set {name}" + (f" --project {scope}" if scope else "")


def _encode_value(name: str, value: str) -> bytes:
    if not isinstance(value, str) or value == "":
        raise ConfigError(
            f"refusing to store an empty value for {name}",
            hint=f"to remove the variable use `agent-swarm env rm {name}`",
        )
    if "\0" in value:
        raise ConfigError(
            f"the value for {name} contains a NUL character, which an environment variable "
            "cannot hold",
        )
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"the value for {name} is not valid UTF-8 text",
            hint="pass it as UTF-8, e.g. on stdin",
        ) from None
    if len(data) > MAX_VALUE_BYTES:
        raise ConfigError(
            f"the value for {name} is {len(data)} bytes; an environment variable holds at "
            f"most {MAX_VALUE_BYTES} bytes",
            hint="put large secrets in a file and copy it in with `agent-swarm cp`",
        )
    return data


class EnvStore:
    """Set, remove, list and resolve encrypted environment variables.

    ``EnvStore(registry).resolve(project)`` is what VM code calls: the decrypted variables
    for that project (global ones overridden by the project's), or for the global scope only
    when ``project`` is None. It touches the keystore only when there is something to decrypt.
    """

    def __init__(self, registry: Registry, backend: SecretBackend | None = None) -> None:
        self.registry = registry
        self.backend = backend if backend is not None else KeyringBackend()

    # ---- key ----
    def _master_key(self, *, create: bool, needed_for: int = 0) -> bytes:
        key = self.backend.load_master_key()
        if key is None:
            if not create:
                raise self._missing_key(needed_for)
            # Serialise first-key creation with other agent-swarm processes: two racing
            # `env set`s must not each store a key (the loser's value would be lost).
            with self.registry.transaction():
                key = self.backend.load_master_key()
                if key is None:
                    existing = self.registry.count_env_vars()
                    if existing:
                        raise self._missing_key(existing)
                    new = os.urandom(KEY_BYTES)
                    self.backend.store_master_key(new)
                    key = self.backend.load_master_key()
                    if key != new:
                        raise SecretsError(
                            f"{self.backend.describe()} did not keep the master key it was given",
                            hint="check that the keystore is unlocked and writable",
                        )
        if len(key) != KEY_BYTES:
            raise SecretsError(
                f"the master key in {self.backend.describe()} has {len(key)} bytes, not "
                f"{KEY_BYTES}",
                hint="it was changed outside agent-swarm; restore it, or delete that entry "
                "and set every variable again",
            )
        return key

    def _missing_key(self, count: int) -> SecretsError:
        return SecretsError(
            f"the master key is not in {self.backend.describe()}, but the registry holds "
            f"{count} encrypted environment variable(s) made with it",
            hint="run agent-swarm where that keystore is available and unlocked; to start "
            "afresh remove them (see `agent-swarm env list`, then `agent-swarm env rm`)",
        )

    # ---- operations ----
    def set(self, name: str, value: str, project: str | None = None) -> None:
        """Encrypt and store ``value`` (global, or as ``project``'s override)."""
        validate_env_name(name)
        scope = _scope_of(project)
        plaintext = _encode_value(name, value)
        if scope:
            self.registry.get_project(scope)  # before the keystore is touched
        key = self._master_key(create=True)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(key).encrypt(nonce, plaintext, associated_data(scope, name))
        self.registry.put_env_var(scope, name, nonce, ciphertext)

    def remove(self, name: str, project: str | None = None) -> None:
        """Remove one variable (:class:`EnvVarNotFound` if it does not exist there)."""
        validate_env_name(name, reserved_ok=True)
        self.registry.remove_env_var(_scope_of(project), name)

    def list(self, project: str | None = None) -> builtins.list[EnvVarInfo]:
        """Names and scopes, never values.

        Without ``project``: every variable of every scope (global first, then by project).
        With ``project``: the set that project resolves to, each from the project or global.
        """
        if project is None:
            records = self.registry.list_env_vars()
            globals_ = {r.name for r in records if r.scope == ""}
            return [
                EnvVarInfo(
                    r.name,
                    r.scope or None,
                    overrides_global=bool(r.scope) and r.name in globals_,
                )
                for r in records
            ]
        winners = self._winners(project)
        globals_ = {r.name for r in self.registry.list_env_vars([""])}
        return [
            EnvVarInfo(
                r.name,
                r.scope or None,
                overrides_global=bool(r.scope) and r.name in globals_,
            )
            for r in winners
        ]

    def resolve(self, project: str | None) -> dict[str, str]:
        """The decrypted variables for ``project`` (global overridden by the project's)."""
        winners = self._winners(project)
        if not winners:
            return {}
        key = self._master_key(create=False, needed_for=len(winners))
        aead = AESGCM(key)
        return {r.name: self._decrypt(aead, r) for r in winners}

    def verify(self, project: str | None = None) -> int:
        """Decrypt (and discard) every variable :meth:`list` shows; returns how many.

        Raises :class:`SecretsError` for the first one that is tampered with or was made
        with another master key, so problems show up before a VM needs the values.
        """
        records = self.registry.list_env_vars() if project is None else self._winners(project)
        if not records:
            return 0
        aead = AESGCM(self._master_key(create=False, needed_for=len(records)))
        for rec in records:
            self._decrypt(aead, rec)
        return len(records)

    # ---- helpers ----
    def _winners(self, project: str | None) -> builtins.list[EnvVarRecord]:
        scopes = [""] if project is None else ["", _scope_of(project)]
        chosen: dict[str, EnvVarRecord] = {}
        for rec in self.registry.list_env_vars(scopes):
            if rec.name not in chosen or rec.scope != "":
                chosen[rec.name] = rec
        return [chosen[n] for n in sorted(chosen)]

    @staticmethod
    def _decrypt(aead: AESGCM, rec: EnvVarRecord) -> str:
        try:
            if len(rec.nonce) != NONCE_BYTES:
                raise InvalidTag
            plaintext = aead.decrypt(
                bytes(rec.nonce), bytes(rec.ciphertext), associated_data(rec.scope, rec.name)
            )
            return plaintext.decode("utf-8")
        except (InvalidTag, ValueError, TypeError):
            raise SecretsError(
                f"cannot decrypt {rec.name} (scope {_where(rec.scope)}): the value was "
                "tampered with or the master key changed",
                hint=f"set it again: `{_set_cmd(rec.name, rec.scope)}`",
            ) from None
