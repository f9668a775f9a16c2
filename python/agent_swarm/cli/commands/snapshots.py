from __future__ import annotations

import click

from agent_swarm.cli.commands._common import TASK, Name, require_provider

CHECKPOINT = Name("checkpoint name")


@click.command()
@click.argument("name", type=TASK)
@click.argument("checkpoint", type=CHECKPOINT, required=False)
def checkpoint(name: str, checkpoint: str | None) -> None:
    """Checkpoint VM NAME as CHECKPOINT (default: a timestamp). A running VM keeps its memory."""
    require_provider()


@click.command()
@click.argument("name", type=TASK)
@click.argument("checkpoint", type=CHECKPOINT, required=False)
def restore(name: str, checkpoint: str | None) -> None:
    """Restore VM NAME to CHECKPOINT (default: the newest)."""
    require_provider()


@click.command()
@click.argument("name", type=TASK)
def checkpoints(name: str) -> None:
    """List the checkpoints of VM NAME."""
    require_provider()
