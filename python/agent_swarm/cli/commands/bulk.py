from __future__ import annotations

import click

from agent_swarm.cli import LazyGroup
from agent_swarm.cli.commands._common import PROJECT, TASK, require_provider


@click.group(cls=LazyGroup)
def bulk() -> None:
    """Create or delete many task VMs in parallel (bounded concurrency)."""


@bulk.command("create")
@click.argument("project", type=PROJECT)
@click.argument("tasks", nargs=-1, required=True, type=TASK)
@click.option("--parallel", type=click.IntRange(1, 64), help="Max concurrent creates.")
@click.option("--force", is_flag=True, help="Create even if the host would be oversubscribed.")
def create(project: str, tasks: tuple[str, ...], parallel: int | None, force: bool) -> None:
    """Create TASKS from PROJECT in parallel; exit 1 if any failed."""
    require_provider()


@bulk.command("delete")
@click.argument("tasks", nargs=-1, type=TASK)
@click.option("--project", type=PROJECT, help="Delete every task of this project.")
@click.option("--parallel", type=click.IntRange(1, 64), help="Max concurrent deletes.")
def delete(tasks: tuple[str, ...], project: str | None, parallel: int | None) -> None:
    """Delete TASKS (or all tasks of --project) in parallel."""
    if not tasks and not project:
        raise click.UsageError("name the tasks to delete, or use --project NAME")
    require_provider()
