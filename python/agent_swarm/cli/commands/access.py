from __future__ import annotations

import click

from agent_swarm.cli.commands._common import (
    TASK,
    exec_in_vm,
    not_yet,
    require_provider,
    ssh_into_vm,
)


@click.command()
@click.argument("task", type=TASK)
def ssh(task: str) -> None:
    """Interactive SSH session in a task VM, with agent forwarding."""
    raise SystemExit(ssh_into_vm("task", task))


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("task", type=TASK)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-t", "--tty", is_flag=True, help="Allocate a TTY.")
def run(task: str, command: tuple[str, ...], tty: bool) -> None:
    """Run COMMAND in a task VM, streaming output; exits with the command's exit code.

    \b
    Example: agent-swarm run fix-login -- make test
    """
    raise SystemExit(exec_in_vm("task", task, command, tty=tty))


@click.command()
@click.argument("task", type=TASK)
@click.argument("path", required=False)
def code(task: str, path: str | None) -> None:
    """Open VS Code (Remote-SSH) on a task VM, at PATH if given."""
    require_provider()


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("-r", "--recursive", is_flag=True, help="Copy directories recursively.")
def cp(src: str, dst: str, recursive: bool) -> None:
    """Copy files between the host and a VM.

    \b
    agent-swarm cp ./file TASK:/path
    agent-swarm cp TASK:/path ./file
    """
    require_provider()


@click.command("ssh-config")
@click.option("--install", is_flag=True, help="Add an Include line to ~/.ssh/config.")
@click.option("--uninstall", is_flag=True, help="Remove the Include line again.")
def ssh_config(install: bool, uninstall: bool) -> None:
    """Print the generated SSH config (one Host block per VM, alias NAME.agent-swarm)."""
    raise not_yet("ssh-config")
