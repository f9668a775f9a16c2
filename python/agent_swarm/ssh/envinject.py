"""Inject environment variables into a guest command without any argv seeing the values.

The values go over SFTP into a 0600 file on the guest's tmpfs (``/dev/shm``, never on disk),
which the command's shell sources and deletes before running the command. Only the file's
random name appears in a command line, on the host or in the guest.
"""

from __future__ import annotations

import shlex
import uuid

import paramiko

ENV_DIR = "/dev/shm"


def exports(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))


def push(client: paramiko.SSHClient, env: dict[str, str]) -> str | None:
    """Write the env file into the guest; returns its path (None when there is nothing)."""
    if not env:
        return None
    path = f"{ENV_DIR}/.agent-swarm-env-{uuid.uuid4().hex}"
    sftp = client.open_sftp()
    try:
        with sftp.open(path, "wx") as f:  # exclusive create
            sftp.chmod(path, 0o600)  # before any value is written
            f.write(exports(env).encode())
    finally:
        sftp.close()
    return path


def wrap(command: str, env_file: str | None) -> str:
    """``command`` preceded by sourcing (and deleting) the env file."""
    if env_file is None:
        return command
    q = shlex.quote(env_file)
    return f". {q} && rm -f {q} || exit 125\n{command}"
