"""Shared option types and helpers for the command modules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from agent_swarm.cli.context import obj
from agent_swarm.errors import AgentSwarmError
from agent_swarm.models import GUEST_USER
from agent_swarm.names import EXISTING_NAME_RE, NAME_RULE

_SIZE_RE = re.compile(r"(?i)\s*(\d+)\s*([kmgt]i?b?|b)?\s*")
_UNITS = {"": 1 << 20, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class Size(click.ParamType):  # type: ignore[type-arg]
    """A byte size like ``4G``, ``512M`` or ``4096`` (default unit: ``default_unit``)."""

    name = "size"

    def __init__(self, default_unit: str = "m") -> None:
        self.default_unit = default_unit

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE_RE.fullmatch(str(value))
        if not m:
            self.fail(f"{value!r} is not a size (examples: 4G, 512M, 20G)", param, ctx)
        unit = (m.group(2) or self.default_unit)[0].lower()
        n = int(m.group(1)) * _UNITS[unit]
        if n <= 0:
            self.fail(f"{value!r} must be larger than zero", param, ctx)
        return n


class Name(click.ParamType):  # type: ignore[type-arg]
    """A VM/project/image name, validated before any command code runs."""

    name = "name"

    def __init__(self, kind: str = "name") -> None:
        self.kind = kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        # The looser older rule too: existing VMs named "fix-" stay reachable. New names are
        # checked strictly where they are created (validate_name).
        if not isinstance(value, str) or EXISTING_NAME_RE.fullmatch(value) is None:
            self.fail(f"invalid {self.kind} {value!r}: must be {NAME_RULE}", param, ctx)
        return value


TASK = Name("task name")
PROJECT = Name("project name")
IMAGE = Name("base image name")


def _vm_env(kind: str, name: str) -> dict[str, str]:
    """The encrypted env vars for a VM: global, overridden by its project's."""
    from agent_swarm.secrets import EnvStore

    app = obj()
    project = name if kind == "project" else app.registry.get_task(name).project
    return EnvStore(app.registry).resolve(project)


def exec_in_vm(kind: str, name: str, command: tuple[str, ...], *, tty: bool = False) -> int:
    """Run a command in a running VM, streaming output; returns its exit code.

    The VM's env vars are injected without appearing in any command line.
    """
    import shlex
    import sys

    from agent_swarm.ssh import envinject
    from agent_swarm.ssh.client import run

    app = obj()
    env = _vm_env(kind, name)
    client = app.core.vms.connect(kind, name)
    app.progress.done()
    try:
        cmd = command[0] if len(command) == 1 else shlex.join(command)
        cmd = envinject.wrap(cmd, envinject.push(client, env))
        stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer
        return run(client, cmd, stdin=stdin, tty=tty)
    finally:
        client.close()


FORWARD_AGENT = click.option(
    "-A",
    "--forward-agent",
    is_flag=True,
    help="Forward your ssh-agent for this session: processes in the VM can then use (not "
    "read) your keys while it is open. Off by default; [ssh] forward_agent in config.toml.",
)


def ssh_into_vm(
    kind: str,
    name: str,
    command: tuple[str, ...] = (),
    *,
    tty: bool = False,
    forward_agent: bool = False,
) -> int:
    """OpenSSH session on the generated config (pinned host key), with the VM's env vars
    injected (never in a command line) and the guest's `code` command forwarded to the
    host's VS Code. Interactive unless COMMAND is given. ``forward_agent``: forward the
    user's ssh-agent for this session (``-A``), whatever config.toml says."""
    import contextlib
    import shlex
    import subprocess

    from agent_swarm.ssh import codebridge, config, envinject
    from agent_swarm.ssh.openssh import ssh_argv

    app = obj()
    env = _vm_env(kind, name)
    client = app.core.vms.connect(kind, name)  # running, and the pinned key matches
    try:
        env_file = envinject.push(client, env)
        sftp = client.open_sftp()
        try:  # sshd will not bind over a socket left by an earlier session
            with contextlib.suppress(OSError):
                sftp.mkdir(codebridge.GUEST_DIR, 0o700)
            with contextlib.suppress(OSError):
                sftp.remove(codebridge.GUEST_SOCKET)
        finally:
            sftp.close()
    finally:
        client.close()
    app.core.vms.refresh_ssh_config()
    app.progress.done()
    if command:
        remote: str | None = command[0] if len(command) == 1 else shlex.join(command)
    else:
        remote = None if env_file is None else 'exec "$SHELL" -l'
    if remote is not None:
        remote = envinject.wrap(remote, env_file)
    with codebridge.CodeBridge(config.alias(kind, name)) as bridge:
        extra = [*(["-A"] if forward_agent else []), *bridge.forward_args()]
        argv = ssh_argv(kind, name, tty=tty or not command, extra=extra)
        return subprocess.call(argv + ([remote] if remote else []))


def open_code(kind: str, name: str, path: str | None) -> int:
    """VS Code Remote-SSH on the VM's alias (needs `ssh-config --install` once)."""
    import shutil
    import subprocess

    from agent_swarm.ssh import config

    app = obj()
    exe = shutil.which("code")
    if exe is None:
        raise AgentSwarmError(
            "VS Code's `code` command is not on PATH",
            hint="install VS Code and its Remote-SSH extension, then run "
            "`Shell Command: Install 'code' command in PATH` from VS Code",
        )
    app.core.vms.connect(kind, name).close()
    app.core.vms.refresh_ssh_config()
    user_cfg = Path.home() / ".ssh" / "config"
    if not user_cfg.exists() or config.include_line() not in user_cfg.read_text():
        raise AgentSwarmError(
            "VS Code reads ~/.ssh/config, which does not include agent-swarm's hosts yet",
            hint="run `agent-swarm ssh-config --install` once",
        )
    target = path or f"/home/{GUEST_USER}"
    return subprocess.call([exe, "--remote", f"ssh-remote+{config.alias(kind, name)}", target])
