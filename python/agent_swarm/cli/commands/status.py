from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from agent_swarm.cli.context import obj, table
from agent_swarm.errors import AgentSwarmError


@click.command()
def status() -> None:
    """Host CPU/RAM/disk, what each project's VMs take, template generations in use."""
    from pathlib import Path

    from agent_swarm import capacity, disks

    app = obj()
    core = app.core
    h = capacity.host()
    lim = capacity.limits()
    tasks = core.views.tasks() if app.registry.list_tasks() else []
    projects = core.views.projects() if app.registry.list_projects() else []
    running = [v for v in [*projects, *tasks] if v.state == "running"]
    run_cpu = sum(v.cpus for v in running)
    run_mem = sum(v.memory_mib for v in running)
    data: dict[str, Any] = {
        "host": asdict(h),
        "limits": asdict(lim),
        "running": {"vms": len(running), "vcpus": run_cpu, "memory_mib": run_mem},
        "projects": [],
    }
    gib = 1 << 30
    lines = [
        f"host     {h.cpus} CPUs, {h.memory_bytes / gib:.1f} GiB RAM "
        f"({h.memory_available_bytes / gib:.1f} GiB available), "
        f"{h.disk_free_bytes / gib:.1f} GiB free of {h.disk_total_bytes / gib:.1f} GiB disk",
        f"running  {len(running)} VM{'s' if len(running) != 1 else ''}: {run_cpu} vCPUs of "
        f"{h.cpus * lim.cpu_ratio:g} (cpu_ratio {lim.cpu_ratio:g}), "
        f"{run_mem / 1024:.1f} GiB of {capacity.memory_budget(h, lim) / gib:.1f} GiB RAM "
        f"(memory_ratio {lim.memory_ratio:g})",
    ]
    for pv in projects:
        mine = [t for t in tasks if t.project == pv.name]
        vms = [pv, *mine]
        up = [v for v in vms if v.state == "running"]
        gens: list[dict[str, Any]] = []
        for gen in app.registry.list_generations(pv.name):
            size = disks.backend_for(gen.format).actual_size(Path(gen.path))
            users = [t.name for t in mine if t.generation == gen.generation]
            gens.append(
                {
                    "generation": gen.generation,
                    "path": gen.path,
                    "disk_bytes": size,
                    "tasks": users,
                    "newest": gen.generation == pv.generation,
                    "warm": core.warm.summary(gen),
                }
            )
        disk = sum(v.disk_bytes or 0 for v in vms) + sum(g["disk_bytes"] or 0 for g in gens)
        disk += sum(g["warm"]["bytes"] for g in gens if g["warm"])
        data["projects"].append(
            {
                "name": pv.name,
                "state": pv.state,
                "allocated": {
                    "vcpus": sum(v.cpus for v in up),
                    "memory_mib": sum(v.memory_mib for v in up),
                    "running_vms": len(up),
                },
                "disk_bytes": disk,
                "vms": [asdict(v) for v in vms],
                "generations": gens,
            }
        )
        lines += [
            "",
            f"project {pv.name}: {len(up)} of {len(vms)} VMs running, "
            f"{sum(v.cpus for v in up)} vCPUs, {sum(v.memory_mib for v in up) / 1024:.1f} GiB "
            f"RAM allocated; {_size(disk)} on disk",
        ]
        for g in gens:
            pin = f"used by {', '.join(g['tasks'])}" if g["tasks"] else "no tasks"
            lines.append(
                f"  generation {g['generation']}: {_size(g['disk_bytes'])}, {pin}"
                + (" (newest)" if g["newest"] else "")
            )
            if w := g["warm"]:
                clones = w["clones"]
                lines.append(
                    f"    warm template: {_size(w['bytes'])} on disk (RAM file "
                    f"{w['memory_mib']} MiB, {_size(w['ram_bytes'])} written), "
                    + (
                        f"{_size(w['shared_bytes'])} of it in memory, shared by "
                        f"{len(clones)} resumed task{'s' if len(clones) != 1 else ''}"
                        if w["shared_bytes"] is not None
                        else f"{len(clones)} resumed tasks"
                    )
                )
        lines.append(
            "  "
            + table(
                ["VM", "STATE", "GEN", "VCPUS", "RAM", "DISK USED"],
                [
                    [
                        f"{v.name}{' (project)' if v.kind == 'project' else ''}",
                        v.state + (f" ({v.reason})" if v.reason else ""),
                        str(v.generation or "-"),
                        str(v.cpus),
                        f"{v.memory_mib} MiB",
                        _size(v.disk_bytes),
                    ]
                    for v in vms
                ],
            ).replace("\n", "\n  ")
        )
    if not projects:
        lines += ["", "No projects yet: create one with `agent-swarm project create NAME`."]
    app.emit(data, "\n".join(lines))


@click.command()
def providers() -> None:
    """Show which VM providers this host can run, and why not."""
    from agent_swarm.providers import capabilities, default_provider_name, probe_all

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
        caps = capabilities(r.provider) if r.available else None
        d["capabilities"] = asdict(caps) if caps else None
        if caps:
            cps = "disk+memory" if caps.memory_snapshots else "disk" if caps.snapshots else "no"
            ssh = "asked at run time" if caps.dynamic_address else "a loopback port"
            lines.append(
                f"  disks {caps.disk_format}; networks {', '.join(caps.networks)}; "
                f"{cps} checkpoints; SSH address: {ssh}"
            )
    app.emit(data, "\n".join(lines))


@click.command()
@click.option("--fix", is_flag=True, help="Repair what can be repaired.")
def doctor(fix: bool) -> None:
    """Find orphan VMs, disks and rows, stale locks and half-finished operations.

    Exit code 0 when everything is consistent (or was repaired), 1 when problems remain.
    """
    from agent_swarm.doctor import Doctor

    app = obj()
    doc = Doctor(app.core)
    findings = doc.diagnose()
    if fix and findings:
        doc.fix(findings)
    remaining = [f for f in findings if not f.fixed and f.problem != "busy"]
    lines = []
    for f in findings:
        mark = "fixed" if f.fixed else ("busy" if f.problem == "busy" else "PROBLEM")
        lines.append(f"[{mark}] {f.subject}: {f.problem}: {f.detail}")
        if f.error:
            lines.append(f"        fix failed: {f.error}")
        elif not f.fixed and f.fix:
            lines.append(f"        --fix will: {f.fix}")
        elif not f.fixed and f.problem != "busy":
            lines.append("        needs a manual decision (see the detail)")
    if not findings:
        lines.append("All consistent: registry, VMs, disks and ports agree.")
    elif remaining and not fix:
        lines.append(f"{len(remaining)} problem(s); `agent-swarm doctor --fix` repairs them.")
    app.emit({"findings": [f.as_dict() for f in findings], "ok": not remaining}, "\n".join(lines))
    if remaining:
        raise SystemExit(1)


@click.command()
@click.option("--yes", is_flag=True, help="Really delete (default is a dry run).")
def gc(yes: bool) -> None:
    """Remove template generations (and older generations' warm templates) that no VM uses
    (dry run unless --yes).

    The newest generation of each project is always kept (the project runs on it). An older
    one no task uses is removed after the next generation, whose backing file it is, has
    been rewritten onto its own backing (same content; running VMs keep what they opened).
    """
    app = obj()
    plan = app.core.gc.plan()
    if not plan:
        app.emit({"removed": [], "dry_run": not yes}, "Nothing to collect.")
        return
    failed: list[str] = []
    if yes:
        done = []
        for item in plan:  # one that fails does not stop the others
            try:
                if app.core.gc.remove(item):
                    done.append(item)
            except AgentSwarmError as exc:
                failed.append(f"{item['project']} generation {item['generation']}: {exc.message}")
        plan = done
    total = sum(i["disk_bytes"] or 0 for i in plan)
    verb = "Removed" if yes else "Would remove"
    lines = [
        f"{verb} {i['project']} {'the warm template of ' if i.get('warm') else ''}generation "
        f"{i['generation']} ({_size(i['disk_bytes'])})"
        for i in plan
    ]
    lines.append(f"{verb} {_size(total)} in total" + ("" if yes else "; run `gc --yes`."))
    app.progress.done()
    lines += [f"Failed: {f}" for f in failed]
    app.emit(
        {"removed" if yes else "would_remove": plan, "dry_run": not yes, "failed": failed},
        "\n".join(lines),
    )
    if failed:
        raise SystemExit(1)


def _size(n: int | None) -> str:
    from agent_swarm.cli.commands.project import _size as size

    return size(n)
