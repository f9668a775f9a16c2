from __future__ import annotations

import click

from agent_swarm.cli.commands._common import (
    FORWARD_AGENT,
    TASK,
    Name,
    Size,
    exec_in_vm,
    open_code,
    ssh_into_vm,
)
from agent_swarm.cli.context import obj


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("task", type=TASK)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-t", "--tty", is_flag=True, help="Force a TTY when a COMMAND is given.")
@FORWARD_AGENT
def ssh(task: str, command: tuple[str, ...], tty: bool, forward_agent: bool) -> None:
    """SSH session in a task VM (OpenSSH, host key pinned, env vars injected).

    Interactive unless a COMMAND is given. In the session, `code PATH` opens PATH in this
    host's VS Code.

    \b
    Examples: agent-swarm ssh fix-login
              agent-swarm ssh fix-login -- git status
    """
    raise SystemExit(ssh_into_vm("task", task, command, tty=tty, forward_agent=forward_agent))


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
@click.option(
    "-p",
    "--preserve",
    is_flag=True,
    help="Keep permission bits as they are (default: minus your umask). "
    "Setuid, setgid and sticky bits are never copied.",
)
@click.option(
    "-L",
    "--dereference",
    is_flag=True,
    help="Uploads: follow symlinks inside SRC (each directory copied once, loops skipped). "
    "Default: copy them as symlinks.",
)
@click.option(
    "--max-size",
    type=Size("m"),
    default=None,
    metavar="SIZE",
    help="Downloads: stop before copying more than SIZE in total (e.g. 20G).",
)
def cp(
    src: str, dst: str, recursive: bool, preserve: bool, dereference: bool, max_size: int | None
) -> None:
    """Copy files between the host and a VM (SFTP; never a partial file).

    \b
    agent-swarm cp ./file TASK:/path
    agent-swarm cp -r TASK:/home/worker/project ./out
    A project VM is addressed the same way, by its name.

    Modes: permission bits only, minus your umask unless -p. The SRC you name is followed if
    it is a symlink. Uploads with -r copy symlinks as symlinks (-L: follow them); fifos,
    sockets and devices are skipped with a notice.

    Downloads trust nothing the VM sends: names must be plain file names, symlinks and
    special files in the VM are skipped with a notice, nothing is written through a symlink
    on the host, and the copy stops at 1,000,000 entries, 256 directory levels, a file that
    sends more than its announced size, before the destination would have less than 1 GiB
    free, and past --max-size.
    """
    from pathlib import Path

    from agent_swarm.ssh import transfer

    app = obj()
    s_vm, s_path = _split(src)
    d_vm, d_path = _split(dst)
    if (s_vm is None) == (d_vm is None):
        raise click.UsageError("exactly one of SRC and DST must be NAME:/path (a VM path)")
    if d_vm is None and dereference:
        raise click.UsageError("-L applies to uploads: symlinks in a VM are never followed")
    if d_vm is not None and max_size is not None:
        raise click.UsageError("--max-size applies to downloads (copies out of a VM)")
    vm = s_vm or d_vm
    assert vm is not None
    kind = app.core.vms.kind_of(vm)

    def notice(message: str) -> None:
        app.progress.done()
        app.info(message)

    client = app.core.vms.connect(kind, vm)
    try:
        sftp = client.open_sftp()
        if d_vm is not None:
            n = transfer.upload(
                sftp,
                Path(s_path),
                d_path or ".",
                recursive=recursive,
                progress=app.progress,
                notice=notice,
                preserve=preserve,
                dereference=dereference,
            )
        else:
            n = transfer.download(
                sftp,
                s_path,
                Path(d_path),
                recursive=recursive,
                progress=app.progress,
                notice=notice,
                preserve=preserve,
                max_size=max_size,
            )
    finally:
        client.close()
    app.progress.done()
    app.emit({"files": n}, f"{n} file{'s' if n != 1 else ''} copied.")


def _split(arg: str) -> tuple[str | None, str]:
    """("name", "/path") for NAME:/path, (None, arg) for a host path."""
    from agent_swarm.names import EXISTING_NAME_RE

    head, sep, tail = arg.partition(":")
    if sep and EXISTING_NAME_RE.fullmatch(head) and "/" not in head:
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
    path = app.core.vms.refresh_ssh_config()
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


@click.command("ssh-proxy", hidden=True)
@click.argument("kind", type=click.Choice(["task", "project"]))
@click.argument("name", type=Name("VM name"))
@click.option("--timeout", type=click.FloatRange(1), default=60, show_default=True)
def ssh_proxy(kind: str, name: str, timeout: float) -> None:
    """Connect stdin/stdout to a VM's sshd (OpenSSH's ProxyCommand for a VM whose address
    is known only at run time): the address is asked from its provider now, retried while
    the VM has none yet."""
    import time

    from agent_swarm.errors import Timeout
    from agent_swarm.ssh.relay import relay_stdio

    app = obj()
    deadline = time.monotonic() + timeout
    while True:
        try:
            ep = app.core.vms.endpoint(kind, name)
            break
        except Timeout:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    app.close()  # nothing else is needed while bytes flow
    relay_stdio(ep.host, ep.port, timeout=timeout)
