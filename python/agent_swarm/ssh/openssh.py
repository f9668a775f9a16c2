"""Interactive sessions through the OpenSSH client, on the generated config (host key pinned)."""

from __future__ import annotations

import shutil

from agent_swarm.errors import ProviderUnavailable
from agent_swarm.ssh import config


def ssh_argv(
    kind: str, name: str, *, tty: bool = True, extra: list[str] | None = None
) -> list[str]:
    exe = shutil.which("ssh")
    if exe is None:
        raise ProviderUnavailable(
            "the OpenSSH client (ssh) is not installed", hint="apt install openssh-client"
        )
    return [
        exe,
        "-F",
        str(config.config_path()),
        "-o",
        "LogLevel=ERROR",
        *(["-t"] if tty else []),
        *(extra or []),
        config.alias(kind, name),
    ]
