from __future__ import annotations

import click

from agent_swarm.cli.commands._common import TASK, exec_in_vm, open_code, ssh_into_vm
from agent_swarm.cli.context import obj


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("task", type=TASK)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-t", "--tty", is_flag=True, help="Force a TTY when a COMMAND is given.")
def ssh(task: str, command: tuple[str, ...], tty: bool) -> None:
    """SSH session in a task VM (OpenSSH, agent forwarding, env vars injected).

    Interactive unless a COMMAND is given. In the session, `code PATH` opens PATH in this
    host's VS Code.

    \b
    Examples: agent-swarm ssh fix-login
              agent-swarm ssh fix-login -- git status
    """
    raise SystemExit(ssh_into_vm("task", task, command, tty=tty))


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
    """Open VS Code (Remote-SSH) on a task VM, at PATH if given (default: the home dir)."""
    raise SystemExit(open_code("task", task, path))


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("-r", "--recursive", is_flag=True, help="Copy directories recursively.")
def cp(src: str, dst: str, recursive: bool) -> None:
    """Copy files between the host and a VM (SFTP; modes kept; never a partial file).

    \b
    agent-swarm cp ./file TASK:/path
    agent-swarm cp -r TASK:/home/worker/project ./out
    A project VM is addressed the same way, by its name.
    """
    from pathlib import Path

    from agent_swarm.ssh import transfer

    app = obj()
    s_vm, s_path = _split(src)
    d_vm, d_path = _split(dst)
    if (s_vm is None) == (d_vm is None):
        raise click.UsageError("exactly one of SRC and DST must be NAME:/path (a VM path)")
    vm = s_vm or d_vm
    assert vm is not None
    kind = app.swarm.kind_of(vm)
    client = app.swarm.connect(kind, vm)
    try:
        sftp = client.open_sftp()
        if d_vm is not None:
            n = transfer.upload(
                sftp, Path(s_path), d_path or ".", recursive=recursive, progress=app.progress
            )
        else:
            n = transfer.download(
                sftp, s_path, Path(d_path), recursive=recursive, progress=app.progress
            )
    finally:
        client.close()
    app.progress.done()
    app.emit({"files": n}, f"{n} file{'s' if n != 1 else ''} copied.")


def _split(arg: str) -> tuple[str | None, str]:
    """("name", "/path") for NAME:/path, (None, arg) for a host path."""
    from agent_swarm.names import NAME_RE

    head, sep, tail = arg.partition(":")
    if sep and NAME_RE.fullmatch(head) and "/" not in head:
        return head, tail
    return None, arg


@click.command("ssh-config")
@click.option("--install", is_flag=True, help="Add an Include line to ~/.ssh/config.")
@click.option("--uninstall", is_flag=True, help="Remove the Include line again.")
def ssh_config(install: bool, uninstall: bool) -> None:
    """Print the generated SSH config (one Host block per VM).

    Aliases: TASK.agent-swarm and PROJECT.project.agent-swarm, with the VM's host key pinned.
    With --install, one `Include` line in ~/.ssh/config makes plain ssh, scp, rsync, git and
    VS Code Remote-SSH work on them (idempotent; --uninstall removes it).
    """
    from agent_swarm.ssh import config

    app = obj()
    path = app.swarm.refresh_ssh_config()
    if install and uninstall:
        raise click.UsageError("use --install or --uninstall, not both")
    if install:
        changed = config.install()
        app.emit(
            {"installed": True, "changed": changed, "config": str(path)},
            f"{'Added' if changed else 'Already present'}: `{config.include_line()}` "
            "in ~/.ssh/config",
        )
        return
    if uninstall:
        changed = config.uninstall()
        app.emit(
            {"installed": False, "changed": changed},
            "Removed the Include line." if changed else "No Include line to remove.",
        )
        return
    text = path.read_text()
    app.emit({"config": str(path), "text": text}, text.rstrip("\n"))
