"""Keys: one ed25519 client key for agent-swarm, and a fresh ed25519 host key per VM.

Host keys are generated on the host and handed to the guest through its cloud-init seed, so
their public half is known (and pinned) before the VM first boots: connections always verify
the host key, and there is no trust-on-first-use window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent_swarm import paths
from agent_swarm.fsutil import atomic_write

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


def client_key_path() -> Path:
    """agent-swarm's own client key (created 0600 on first use)."""
    d = keys_dir()
    priv = d / CLIENT_KEY
    pub = d / f"{CLIENT_KEY}.pub"
    if not priv.exists():
        pair = generate_ed25519("agent-swarm")
        atomic_write(pub, pair.public_openssh + "\n", mode=0o644)
        atomic_write(priv, pair.private_openssh, mode=0o600)  # last: its presence means "done"
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
