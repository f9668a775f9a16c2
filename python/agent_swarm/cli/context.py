"""Per-invocation state shared by commands: output mode and a lazily opened registry."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from agent_swarm.cli.progress import Progress
    from agent_swarm.core import Core
    from agent_swarm.registry import Registry


@dataclass
class AppContext:
    as_json: bool = False
    debug: bool = False
    _registry: Registry | None = field(default=None, repr=False)
    _core: Core | None = field(default=None, repr=False)
    _progress: Progress | None = field(default=None, repr=False)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from agent_swarm import paths
            from agent_swarm.registry import Registry

            paths.ensure_home()
            self._registry = Registry(paths.registry_path())
        return self._registry

    @property
    def progress(self) -> Progress:
        if self._progress is None:
            from agent_swarm.cli.progress import Progress

            self._progress = Progress()
        return self._progress

    @property
    def core(self) -> Core:
        """The composition root (registry, layout, providers, services) for this command."""
        if self._core is None:
            from agent_swarm.core import Core

            self._core = Core(self.registry, progress=self.progress)
        return self._core

    def close(self) -> None:
        if self._progress is not None:
            self._progress.done()
        if self._core is not None:
            self._core.close_providers()
            self._core = None
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    # ---- output ----
    def emit(self, data: Any, human: str | None = None) -> None:
        """Print ``data`` as JSON in --json mode, else the human text (if any)."""
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        elif human is not None:
            click.echo(human)

    def info(self, message: str) -> None:
        """Progress/notice line: stderr, so stdout stays clean for data and --json."""
        click.echo(message, err=True)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces (no trailing whitespace)."""
    cols = [headers, *rows]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(headers))]
    lines = []
    for r in cols:
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=False)).rstrip())
    return "\n".join(lines)


def obj(ctx: click.Context | None = None) -> AppContext:
    c = ctx or click.get_current_context()
    app = c.find_object(AppContext)
    if app is None:  # invoked without the root group (tests calling a subcommand)
        app = AppContext()
        c.obj = app
    return app
