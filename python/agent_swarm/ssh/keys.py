"""Keys: one ed25519 client key for agent-swarm, and a fresh ed25519 host key per VM.

Host keys are generated on the host and handed to the guest through its cloud-init seed, so
their public half is known (and pinned) before the VM first boots: connections always verify
the host key, and there is no trust-on-first-use window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent_swarm import paths
from agent_swarm.errors import SSHError
from agent_swarm.fsutil import atomic_write, file_lock

CLIENT_KEY = "id_ed25519"


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str  # PEM-like "-----BEGIN OPENSSH PRIVATE KEY-----" text
    public_openssh: str  # "ssh-ed25519 AAAA… comment"


def generate_ed25519(comment: str) -> KeyPair:
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    pub = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return KeyPair(priv, f"{pub} {comment}")


def keys_dir() -> Path:
    d = paths.ensure_home() / paths.KEYS_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _public_of(priv: Path) -> str:
    """``ssh-ed25519 AAAA…`` (no comment) derived from the private key file."""
    try:
        key = serialization.load_ssh_private_key(priv.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SSHError(
            f"agent-swarm's client key {priv} is not a readable OpenSSH private key",
            hint="restore it from a backup (the VMs only accept this key); moving it away "
            "makes agent-swarm create a new one that existing VMs do not know",
        ) from exc
    except OSError as exc:
        raise SSHError(f"cannot read agent-swarm's client key {priv}: {exc.strerror}") from exc
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def _pair_ok(priv: Path, pub: Path) -> bool:
    try:
        line = pub.read_text()
    except (OSError, UnicodeDecodeError):  # missing, unreadable or garbage: rewritten
        return False
    return " ".join(line.split()[:2]) == _public_of(priv)


def client_key_path() -> Path:
    """agent-swarm's own client key (created 0600 on first use), with its matching ``.pub``.

    Concurrent first commands must end with one pair: creation runs under a file lock, and the
    ``.pub`` is put in place before the private key, so whoever sees the private key also sees
    its public half. A ``.pub`` that does not match (left by an older agent-swarm that raced)
    is rewritten from the private key, which is the truth.
    """
    d = keys_dir()
    priv = d / CLIENT_KEY
    pub = d / f"{CLIENT_KEY}.pub"
    if priv.exists() and _pair_ok(priv, pub):
        return priv
    with file_lock(d / f".{CLIENT_KEY}.lock"):
        if not priv.exists():
            pair = generate_ed25519("agent-swarm")
            atomic_write(pub, pair.public_openssh + "\n", mode=0o644)
            atomic_write(priv, pair.private_openssh, mode=0o600)  # last: its presence = done
        elif not _pair_ok(priv, pub):
            atomic_write(pub, f"{_public_of(priv)} agent-swarm\n", mode=0o644)
    return priv


def client_public_key() -> str:
    return (client_key_path().with_suffix(".pub")).read_text().strip()


def user_public_keys() -> list[str]:
    """The user's own public keys (~/.ssh/*.pub), so plain `ssh` with their agent works too."""
    out = []
    ssh_dir = Path.home() / ".ssh"
    for p in sorted(ssh_dir.glob("id_*.pub")):
        try:
            line = p.read_text().strip()
        except OSError:
            continue
        if line.startswith(("ssh-", "ecdsa-", "sk-")) and "\n" not in line:
            out.append(line)
    return out


def public_key_blob(public_openssh: str) -> tuple[str, str]:
    """("ssh-ed25519", "AAAA…") from an OpenSSH public key line."""
    kind, blob = public_openssh.split()[:2]
    return kind, blob


def authorized_keys(project: str | None) -> list[str]:
    """Keys authorized in a new VM: agent-swarm's own always; the user's ~/.ssh/id_*.pub only
    with ``authorize_user_keys = true`` in config.toml (globally or for the project)."""
    from agent_swarm import settings

    out = [client_public_key()]
    if settings.for_project(project).authorize_user_keys:
        out += [k for k in user_public_keys() if k not in out]
    return out
