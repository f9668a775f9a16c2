from __future__ import annotations

import click

from agent_swarm.cli import LazyGroup
from agent_swarm.cli.commands._common import PROJECT, not_yet
from agent_swarm.names import validate_env_name


def _env_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return validate_env_name(value)
    except Exception as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(cls=LazyGroup)
def env() -> None:
    """Encrypted environment variables (AES-256-GCM, key in the OS keystore).

    They are injected into `run`, `ssh`, `project run` and `project ssh` without ever
    appearing in a command line. Project values override global ones.
    """


@env.command("set")
@click.argument("key", callback=_env_name)
@click.argument("value", required=False)
@click.option("--project", type=PROJECT, help="Set a per-project override.")
def set_(key: str, value: str | None, project: str | None) -> None:
    """Set KEY. Without VALUE it is read from stdin or a hidden prompt (keeps it out of
    your shell history)."""
    raise not_yet("env set")


@env.command("list")
@click.option("--project", type=PROJECT, help="Show the names resolved for this project.")
def list_(project: str | None) -> None:
    """List variable names and scopes (never values)."""
    raise not_yet("env list")


@env.command("rm")
@click.argument("key", callback=_env_name)
@click.option("--project", type=PROJECT, help="Remove the per-project override.")
def rm(key: str, project: str | None) -> None:
    """Remove KEY."""
    raise not_yet("env rm")
