"""Inject environment variables into a guest command without any argv seeing the values.

The values go over SFTP into a file on the guest's tmpfs (``/dev/shm``, never on disk),
inside a fresh directory created 0700 before the file exists, so no other guest user can
open the file at any moment. The command's shell opens the file, deletes it (and its
directory) before reading a byte of it, sources it, and runs the command only if that
worked (else it exits 125), so the file is gone however the sourcing ends. Only the file's
random name appears in a command line, on the host or in the guest.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import shlex
import uuid

import paramiko

from agent_swarm.errors import InvalidName, SSHError
from agent_swarm.names import validate_env_name

ENV_DIR = "/dev/shm"
_DIR_PREFIX = ".agent-swarm-env-"
_FILE = "env"
EXIT_ENV_FAILED = 125  # the guest command's exit status when the env file cannot be sourced


def exports(env: dict[str, str]) -> str:
    """One ``export`` statement for all of ``env`` (one statement: any failing name fails
    it, where separate lines would let the last one's success hide an earlier failure)."""
    for k in env:
        try:
            validate_env_name(k)
        except InvalidName as exc:
            raise InvalidName(
                exc.message,
                hint=f"remove it with `agent-swarm env rm {k}` (add --project NAME for a "
                "project's), then set the value under another name",
            ) from None
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())) + "\n"


def push(client: paramiko.SSHClient, env: dict[str, str]) -> str | None:
    """Write the env file into the guest; returns its path (None when there is nothing)."""
    if not env:
        return None
    data = exports(env).encode()
    d = f"{ENV_DIR}/{_DIR_PREFIX}{uuid.uuid4().hex}"
    path = f"{d}/{_FILE}"
    sftp = client.open_sftp()
    try:
        sftp.mkdir(d, 0o700)  # private before the file exists: its default mode is moot
        try:
            with sftp.open(path, "wx") as f:  # exclusive create
                sftp.chmod(path, 0o600)
                f.write(data)
        except BaseException:
            with contextlib.suppress(OSError, paramiko.SSHException):
                sftp.remove(path)
            with contextlib.suppress(OSError, paramiko.SSHException):
                sftp.rmdir(d)
            raise
    except (OSError, paramiko.SSHException) as exc:
        raise SSHError(
            f"could not write the environment file into the VM ({exc})",
            hint="is the VM's /dev/shm full or missing? `agent-swarm ssh` in and check `df "
            "/dev/shm`",
        ) from None
    finally:
        sftp.close()
    return path


def wrap(command: str, env_file: str | None) -> str:
    """``command`` preceded by opening, deleting and sourcing the env file from :func:`push`.

    Plain POSIX sh (bash, dash): the file is open on fd 3 and removed before it is read; a
    failed ``.`` (or a shell that exits on it) ends with status 125 through the EXIT trap,
    which is reset before ``command`` runs. fd 3 is closed for ``command``.
    """
    if env_file is None:
        return command
    pattern = rf"{re.escape(ENV_DIR)}/{re.escape(_DIR_PREFIX)}[0-9a-f]{{32}}/{_FILE}"
    if re.fullmatch(pattern, env_file) is None:
        raise ValueError(f"not an env file made by push(): {env_file!r}")
    q, qd = shlex.quote(env_file), shlex.quote(posixpath.dirname(env_file))
    rc = EXIT_ENV_FAILED
    return (
        f"{{ rm -rf {qd}; trap 'exit {rc}' EXIT; . /dev/fd/3 && trap - EXIT; }} 3< {q} "
        f"|| exit {rc}\n{command}"
    )
