from __future__ import annotations

from dataclasses import asdict

import click

from agent_swarm.cli import LazyGroup
from agent_swarm.cli.commands._common import (
    FORWARD_AGENT,
    IMAGE,
    PROJECT,
    Size,
    exec_in_vm,
    ssh_into_vm,
)
from agent_swarm.cli.context import obj, table


@click.group(cls=LazyGroup)
def project() -> None:
    """Manage project VMs: the set-up-once templates that tasks are cloned from.

    \b
    Typical flow:
      agent-swarm project create myapp      # boots, runs ~/.agent-swarm/setup.sh
      agent-swarm project ssh myapp         # install your repo, services, tools
      agent-swarm project stop myapp        # seals a read-only template generation
      agent-swarm create myapp fix-login    # task VMs clone the newest generation
    """


@project.command("create")
@click.argument("name", type=PROJECT)
@click.option("--base", type=IMAGE, help="Base image to start from (default: the newest one).")
@click.option("--cpus", type=click.IntRange(1, 256), default=2, show_default=True)
@click.option("--memory", type=Size("m"), default="2G", show_default=True, help="RAM, e.g. 4G.")
@click.option(
    "--disk", type=Size("g"), default="20G", show_default=True, help="Disk size, e.g. 40G."
)
@click.option(
    "--network",
    metavar="user|nat",
    help="user (default): a private user-mode network, SSH on a loopback port; nat: the "
    "provider's NAT network, address from DHCP (where it has one: `agent-swarm providers`).",
)
@click.option(
    "--provider",
    metavar="NAME",
    help="The VM backend (default: this platform's, or $AGENT_SWARM_PROVIDER). Its tasks "
    "use the same one.",
)
@click.option(
    "--host-access/--no-host-access",
    default=None,
    help="Let the VM reach this host's loopback services (and so other VMs' SSH ports) "
    "through its gateway. Default: isolated (outside world only), or [network] host_access / "
    "[project.NAME] host_access in config.toml.",
)
@click.option("--no-wait", is_flag=True, help="Return once the VM is booting.")
@click.option("--no-start", is_flag=True, help="Only create it (disk, seed, VM); do not boot.")
@click.option("--force", is_flag=True, help="Boot even if the host would be oversubscribed.")
def create(
    name: str,
    base: str | None,
    cpus: int,
    memory: int,
    disk: int,
    network: str | None,
    provider: str | None,
    host_access: bool | None,
    no_wait: bool,
    no_start: bool,
    force: bool,
) -> None:
    """Create a project VM from a base image, boot it and wait until it is ready.

    On its first boot the VM runs ~/.agent-swarm/setup.sh (created with examples on first
    use) as root.
    """
    app = obj()
    p = app.core.projects.create(
        name,
        base=base,
        cpus=cpus,
        memory_mib=memory >> 20,
        disk_gib=max(1, disk >> 30),
        network=network,
        provider=provider,
        host_access=host_access,
        wait=not no_wait,
        start=not no_start,
        force=force,
    )
    app.progress.done()
    state = "created (not started)" if no_start else "booting" if no_wait else "ready"
    app.emit(
        {"name": p.name, "base_image": p.base_image, "ready": not (no_wait or no_start)},
        f"Project {name} is {state}. Set it up with "
        f"`agent-swarm project ssh {name}`, then seal it with `agent-swarm project stop {name}`.",
    )


@project.command("list")
def list_() -> None:
    """List projects, their state and template generations."""
    app = obj()
    views = app.core.views.projects() if app.registry.list_projects() else []
    app.emit(
        [asdict(v) for v in views],
        table(
            ["NAME", "STATE", "GEN", "SSH", "CPUS", "MEMORY", "DISK USED"],
            [
                [
                    v.name,
                    v.state + (f" ({v.reason})" if v.reason else ""),
                    str(v.generation or "-"),
                    v.ssh or "-",
                    str(v.cpus),
                    f"{v.memory_mib} MiB",
                    _size(v.disk_bytes),
                ]
                for v in views
            ],
        )
        if views
        else "No projects yet: create one with `agent-swarm project create NAME`.",
    )


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


@project.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("name", type=PROJECT)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-t", "--tty", is_flag=True, help="Force a TTY when a COMMAND is given.")
@FORWARD_AGENT
def ssh(name: str, command: tuple[str, ...], tty: bool, forward_agent: bool) -> None:
    """SSH session in a project VM (starts it if stopped); interactive unless COMMAND.

    In the session, `code PATH` opens PATH in this host's VS Code.
    """
    app = obj()
    from agent_swarm.models import InstanceState

    if app.core.vms.status("project", name).state is not InstanceState.RUNNING:
        app.core.projects.start(name)
    raise SystemExit(ssh_into_vm("project", name, command, tty=tty, forward_agent=forward_agent))


@project.command("start")
@click.argument("name", type=PROJECT)
@click.option("--force", is_flag=True, help="Start even if the host would be oversubscribed.")
def start(name: str, force: bool) -> None:
    """Start a project VM with its disk as it is (after a seal: the fresh clone of the
    newest template generation that the seal left it on)."""
    app = obj()
    app.core.projects.start(name, force=force)
    app.progress.done(f"Project {name} is running.")


@project.command("stop")
@click.argument("name", type=PROJECT)
@click.option(
    "--timeout",
    type=click.FloatRange(0),
    default=120,
    show_default=True,
    help="Seconds to wait for a graceful shutdown before forcing it off.",
)
@click.option("--no-seal", is_flag=True, help="Only stop; do not seal a new template generation.")
@click.option(
    "--warm/--no-warm",
    default=None,
    help="After sealing, boot the new generation once and save it running, so tasks resume "
    "from memory in seconds (default: [seal] warm in config.toml, else off).",
)
def stop(name: str, timeout: float, no_seal: bool, warm: bool | None) -> None:
    """Stop a project VM and seal its disk as the new template generation for tasks.

    Before sealing, the guest's identity is reset (cloud-init state, machine-id, SSH host
    keys) so every task cloned from the template boots as a new machine.
    """
    from agent_swarm import settings

    app = obj()
    if warm is None:
        warm = settings.for_project(name).warm and not no_seal
    if warm and no_seal:
        from agent_swarm.errors import ConfigError

        raise ConfigError("--warm saves the new generation: it cannot go with --no-seal")
    gen = app.core.projects.stop(name, timeout=timeout, seal=not no_seal)
    warm_dir = None
    if warm and app.registry.latest_generation(name) is not None:
        warm_dir = str(app.core.warm.make(name).dir)
    app.progress.done()
    msg = f"Project {name} stopped" + (f"; sealed template generation {gen}" if gen else "")
    msg += "; tasks resume from its warm template." if warm_dir else "."
    app.emit({"name": name, "generation": gen, "warm": warm_dir}, msg)


@project.command("warm")
@click.argument("name", type=PROJECT)
@click.option("--force", is_flag=True, help="Save it again even if it is already warm.")
@click.option("--drop", is_flag=True, help="Remove the warm template instead.")
def warm_(name: str, force: bool, drop: bool) -> None:
    """Save PROJECT's newest template generation running, so new tasks resume from its memory
    (about a second) instead of booting (a minute under emulation).

    Boots the generation once (a cold boot), waits until cloud-init is done, saves its RAM
    and device state next to the generation and powers it off. Tasks then map that RAM
    copy-on-write and share its unchanged pages. `create --cold` still boots cold.
    """
    app = obj()
    if drop:
        if not app.core.warm.remove(name):
            app.emit({"name": name, "dropped": False}, f"Project {name} has no warm template.")
            return
        app.emit({"name": name, "dropped": True}, f"Removed the warm template of {name}.")
        return
    t = app.core.warm.make(name, force=force)
    app.progress.done()
    app.emit(
        {"name": name, "generation": t.generation, "path": str(t.dir), "bytes": t.size()},
        f"Project {name} generation {t.generation} is warm ({_size(t.size())} on disk): "
        f"`agent-swarm create {name} TASK` resumes from it.",
    )


@project.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("name", type=PROJECT)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-t", "--tty", is_flag=True, help="Allocate a TTY.")
def run(name: str, command: tuple[str, ...], tty: bool) -> None:
    """Run a command in a project VM; exits with the command's exit code."""
    raise SystemExit(exec_in_vm("project", name, command, tty=tty))


@project.command("code")
@click.argument("name", type=PROJECT)
@click.argument("path", required=False)
def code(name: str, path: str | None) -> None:
    """Open VS Code (Remote-SSH) on a project VM, at PATH if given."""
    from agent_swarm.cli.commands._common import open_code

    raise SystemExit(open_code("project", name, path))


@project.command("delete")
@click.argument("name", type=PROJECT)
def delete(name: str) -> None:
    """Delete a project VM, its disks and template generations (tasks must go first)."""
    app = obj()
    app.core.projects.delete(name)
    app.emit({"name": name, "deleted": True}, f"Project {name} deleted.")
