from __future__ import annotations

from dataclasses import asdict

import click

from agent_swarm.cli import LazyGroup
from agent_swarm.cli.commands._common import IMAGE, PROJECT, Size, require_provider
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
@click.option("--base", type=IMAGE, help="Base image to start from (default: the only/newest one).")
@click.option("--cpus", type=click.IntRange(1, 256), default=2, show_default=True)
@click.option("--memory", type=Size("m"), default="4G", show_default=True, help="RAM, e.g. 4G.")
@click.option(
    "--disk", type=Size("g"), default="20G", show_default=True, help="Disk size, e.g. 40G."
)
def create(name: str, base: str | None, cpus: int, memory: int, disk: int) -> None:
    """Create a project VM from a base image, boot it and wait until it is ready."""
    require_provider()


@project.command("list")
def list_() -> None:
    """List projects and their template generations."""
    app = obj()
    reg = app.registry
    projects = reg.list_projects()
    rows = []
    data = []
    for p in projects:
        gens = reg.list_generations(p.name)
        rows.append([p.name, p.base_image, str(p.cpus), f"{p.memory_mib} MiB", str(len(gens))])
        data.append({**asdict(p), "generations": [g.generation for g in gens]})
    app.emit(
        data,
        table(["NAME", "BASE", "CPUS", "MEMORY", "GENERATIONS"], rows)
        if rows
        else "No projects yet: create one with `agent-swarm project create NAME`.",
    )


@project.command("ssh")
@click.argument("name", type=PROJECT)
def ssh(name: str) -> None:
    """Open an interactive SSH session in a project VM (starts it if stopped)."""
    require_provider()


@project.command("start")
@click.argument("name", type=PROJECT)
def start(name: str) -> None:
    """Start a project VM (on a fresh overlay of its newest template generation)."""
    require_provider()


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
def stop(name: str, timeout: float, no_seal: bool) -> None:
    """Stop a project VM and seal its disk as the new template generation for tasks."""
    require_provider()


@project.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("name", type=PROJECT)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-t", "--tty", is_flag=True, help="Allocate a TTY.")
def run(name: str, command: tuple[str, ...], tty: bool) -> None:
    """Run a command in a project VM; exits with the command's exit code."""
    require_provider()


@project.command("code")
@click.argument("name", type=PROJECT)
@click.argument("path", required=False)
def code(name: str, path: str | None) -> None:
    """Open VS Code (Remote-SSH) on a project VM."""
    require_provider()


@project.command("delete")
@click.argument("name", type=PROJECT)
@click.option("-f", "--force", is_flag=True, help="Delete even if the VM is running.")
def delete(name: str, force: bool) -> None:
    """Delete a project VM, its disks and template generations (tasks must go first)."""
    require_provider()
