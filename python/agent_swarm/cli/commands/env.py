from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from agent_swarm.cli import LazyGroup
from agent_swarm.cli.commands._common import PROJECT
from agent_swarm.cli.context import obj, table
from agent_swarm.errors import ConfigError, InvalidName
from agent_swarm.names import validate_env_name

if TYPE_CHECKING:
    from agent_swarm.secrets import EnvStore


def _env_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return validate_env_name(value)
    except InvalidName as exc:
        raise click.BadParameter(f"{exc.message}: {exc.hint}") from None


def _env_name_any(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """For `rm`: a name the shell owns, stored by an older version, can still be removed."""
    try:
        return validate_env_name(value, reserved_ok=True)
    except InvalidName as exc:
        raise click.BadParameter(f"{exc.message}: {exc.hint}") from None


def _store() -> EnvStore:
    from agent_swarm.secrets import EnvStore

    return EnvStore(obj().registry)


def _where(project: str | None) -> str:
    return "global" if project is None else f"project {project}"


def _read_value(key: str) -> str:
    """The value from stdin when it is redirected, else from a hidden, confirmed prompt."""
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        value: str = click.prompt(
            f"Value for {key}", hide_input=True, confirmation_prompt=True, err=True
        )
        return value
    data = stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"the value for {key} read from stdin is not valid UTF-8 text",
            hint="environment variables hold text; encode binary secrets, e.g. with base64",
        ) from None
    for newline in ("\r\n", "\n"):  # one trailing newline, as `echo` and editors add
        if text.endswith(newline):
            return text[: -len(newline)]
    return text


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
    app = obj()
    if project is not None:
        app.registry.get_project(project)  # before anyone types a secret for nothing
    if value is None:
        value = _read_value(key)
    else:
        app.info(
            "Note: a value given on the command line is visible in your shell history and "
            f"the process list; prefer `agent-swarm env set {key}` (prompt) or stdin."
        )
    _store().set(key, value, project=project)
    app.emit(
        {"name": key, "scope": "global" if project is None else "project", "project": project},
        f"Set {key} ({_where(project)}).",
    )


@env.command("list")
@click.option("--project", type=PROJECT, help="Show the names resolved for this project.")
@click.option(
    "--check",
    is_flag=True,
    help="Also decrypt each listed value (never shown) to verify it is intact and the "
    "master key is available.",
)
def list_(project: str | None, check: bool) -> None:
    """List variable names and scopes (never values).

    Without --project: every variable, global and per project. With --project: the set that
    project gets, each marked as coming from the project or from the global scope.
    """
    app = obj()
    store = _store()
    infos = store.list(project)
    if check:
        store.verify(project)
    rows = []
    for i in infos:
        scope = "global" if i.project is None else f"project {i.project}"
        if i.overrides_global:
            scope += " (overrides global)"
        rows.append([i.name, scope])
    human = table(["NAME", "SCOPE"], rows) if rows else "No environment variables."
    app.emit([i.to_json() for i in infos], human)


@env.command("rm")
@click.argument("key", callback=_env_name_any)
@click.option("--project", type=PROJECT, help="Remove the per-project override.")
def rm(key: str, project: str | None) -> None:
    """Remove KEY."""
    app = obj()
    _store().remove(key, project=project)
    app.emit(
        {"removed": key, "scope": "global" if project is None else "project", "project": project},
        f"Removed {key} ({_where(project)}).",
    )
