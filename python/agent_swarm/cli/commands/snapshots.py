from __future__ import annotations

import time

import click

from agent_swarm.cli.commands._common import TASK, Name
from agent_swarm.cli.context import obj, table

CHECKPOINT = Name("checkpoint name")


@click.command()
@click.argument("name", type=TASK)
@click.argument("checkpoint", type=CHECKPOINT, required=False)
def checkpoint(name: str, checkpoint: str | None) -> None:
    """Checkpoint VM NAME as CHECKPOINT (default: a timestamp).

    A running VM keeps its memory: restoring returns it running exactly as it was. A
    stopped VM's checkpoint holds its disk.
    """
    app = obj()
    cp = app.core.checkpoints.create(name, checkpoint)
    app.emit({"name": name, "checkpoint": cp}, f"Checkpoint {cp} of {name} created.")


@click.command()
@click.argument("name", type=TASK)
@click.argument("checkpoint", type=CHECKPOINT, required=False)
def restore(name: str, checkpoint: str | None) -> None:
    """Restore VM NAME to CHECKPOINT (default: the newest)."""
    app = obj()
    cp = app.core.checkpoints.restore(name, checkpoint)
    app.emit({"name": name, "checkpoint": cp}, f"{name} restored to checkpoint {cp}.")


@click.command()
@click.argument("name", type=TASK)
def checkpoints(name: str) -> None:
    """List the checkpoints of VM NAME."""
    app = obj()
    cps = app.core.checkpoints.list(name)
    app.emit(
        cps,
        table(
            ["CHECKPOINT", "CREATED", "VM STATE"],
            [
                [
                    c["name"],
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["created"])),
                    c["state"],
                ]
                for c in cps
            ],
        )
        if cps
        else f"{name} has no checkpoints.",
    )
