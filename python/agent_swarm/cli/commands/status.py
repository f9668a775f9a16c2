from __future__ import annotations

from dataclasses import asdict

import click

from agent_swarm.cli.commands._common import not_yet
from agent_swarm.cli.context import obj


@click.command()
def status() -> None:
    """Host CPU/RAM/disk, what each project's VMs take, template generations in use."""
    raise not_yet("status")


@click.command()
def providers() -> None:
    """Show which VM providers this host can run, and why not."""
    from agent_swarm.providers import default_provider_name, probe_all

    app = obj()
    default = default_provider_name()
    results = probe_all()
    data = []
    lines = []
    for r in results:
        d = asdict(r)
        d["default"] = r.provider == default
        d["reason"] = r.reason
        data.append(d)
        mark = "available" if r.available else "unavailable"
        tag = " (default)" if r.provider == default else ""
        lines.append(f"{r.provider}{tag}: {mark} - {r.description}")
        for c in r.checks:
            sym = "ok  " if c.ok else ("FAIL" if c.required else "warn")
            lines.append(f"  [{sym}] {c.name}: {c.detail}")
            if not c.ok and c.hint:
                lines.append(f"         fix: {c.hint}")
    app.emit(data, "\n".join(lines))


@click.command()
@click.option("--fix", is_flag=True, help="Repair what can be repaired.")
def doctor(fix: bool) -> None:
    """Find orphan VMs, disks and rows, stale locks and half-finished operations."""
    raise not_yet("doctor")


@click.command()
@click.option("--yes", is_flag=True, help="Really delete (default is a dry run).")
def gc(yes: bool) -> None:
    """Remove template generations that no VM uses (dry run unless --yes)."""
    raise not_yet("gc")
