"""Interactive sessions through the OpenSSH client, with the host key pinned."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent_swarm.errors import ProviderUnavailable
from agent_swarm.fsutil import atomic_write
from agent_swarm.models import SSHEndpoint
from agent_swarm.ssh import keys

KNOWN_HOSTS = "known_hosts"


def known_hosts_line(ep: SSHEndpoint, host_public: str) -> str:
    host = ep.host if ep.port == 22 else f"[{ep.host}]:{ep.port}"
    kind, blob = keys.public_key_blob(host_public)
    return f"{host} {kind} {blob}"


def write_known_hosts(entries: list[str]) -> Path:
    """agent-swarm's own known_hosts (atomically rewritten from the registry)."""
    path = keys.keys_dir() / KNOWN_HOSTS
    atomic_write(path, "".join(e + "\n" for e in entries), mode=0o644)
    return path


def ssh_argv(ep: SSHEndpoint, known_hosts: Path, *, tty: bool = True) -> list[str]:
    exe = shutil.which("ssh")
    if exe is None:
        raise ProviderUnavailable(
            "the OpenSSH client (ssh) is not installed", hint="apt install openssh-client"
        )
    return [
        exe,
        "-i",
        str(keys.client_key_path()),
        "-p",
        str(ep.port),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "ForwardAgent=yes",
        "-o",
        "LogLevel=ERROR",
        *(["-t"] if tty else []),
        f"{ep.user}@{ep.host}",
    ]
