from __future__ import annotations

from dataclasses import asdict

import click

from agent_swarm.cli.commands._common import PROJECT, TASK, Size, require_provider
from agent_swarm.cli.context import obj, table


@click.command()
@click.argument("project", type=PROJECT)
@click.argument("task", type=TASK)
@click.option("--cpus", type=click.IntRange(1, 256), help="vCPUs (default: the project's).")
@click.option("--memory", type=Size("m"), help="RAM, e.g. 4G (default: the project's).")
@click.option("--no-wait", is_flag=True, help="Return once the VM is defined and started.")
def create(project: str, task: str, cpus: int | None, memory: int | None, no_wait: bool) -> None:
    """Create task VM TASK cloned copy-on-write from PROJECT's newest template."""
    require_provider()


@click.command("list")
@click.option("--project", type=PROJECT, help="Only tasks of this project.")
def list_(project: str | None) -> None:
    """List task VMs: project, template generation, live state, SSH endpoint, disk used."""
    app = obj()
    tasks = app.registry.list_tasks(project)
    app.emit(
        [asdict(t) for t in tasks],
        table(
            ["NAME", "PROJECT", "GEN", "CPUS", "MEMORY"],
            [
                [t.name, t.project, str(t.generation), str(t.cpus), f"{t.memory_mib} MiB"]
                for t in tasks
            ],
        )
        if tasks
        else "No task VMs. Create one with `agent-swarm create PROJECT TASK`.",
    )


@click.command()
@click.argument("task", type=TASK)
def start(task: str) -> None:
    """Start a stopped task VM and wait until SSH answers."""
    require_provider()


@click.command()
@click.argument("task", type=TASK)
@click.option("-f", "--force", is_flag=True, help="Power off at once instead of shutting down.")
def stop(task: str, force: bool) -> None:
    """Stop a task VM (graceful ACPI shutdown, forced after a timeout)."""
    require_provider()


@click.command()
@click.argument("task", type=TASK)
def delete(task: str) -> None:
    """Delete a task VM, its disk, seed ISO and checkpoints."""
    require_provider()
