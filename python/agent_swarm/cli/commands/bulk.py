from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from agent_swarm.cli import LazyGroup
from agent_swarm.cli.commands._common import PROJECT, TASK, Size
from agent_swarm.cli.context import obj, table
from agent_swarm.errors import AgentSwarmError


@click.group(cls=LazyGroup)
def bulk() -> None:
    """Create, fork or delete many task VMs at once (bounded concurrency)."""


def _finish(results: list[Any], verb: str) -> None:
    app = obj()
    failed = [r for r in results if not r.ok]
    app.emit(
        [r.as_dict() for r in results],
        table(
            ["TASK", "RESULT", "TIME", "DETAIL"],
            [
                [
                    r.name,
                    "ok" if r.ok else "FAILED",
                    f"{r.seconds:.1f}s",
                    r.detail + (f" (hint: {r.hint})" if r.hint else ""),
                ]
                for r in results
            ],
        )
        + f"\n{len(results) - len(failed)} of {len(results)} {verb}"
        + (f"; failed: {', '.join(r.name for r in failed)}" if failed else ""),
    )
    if failed:
        raise SystemExit(1)


@bulk.command("create")
@click.argument("project", type=PROJECT)
@click.argument("tasks", nargs=-1, required=True, type=TASK)
@click.option(
    "--parallel",
    type=click.IntRange(1, 64),
    help="Max concurrent creates (default: from host CPUs, free RAM and the VMs' size).",
)
@click.option("--cpus", type=click.IntRange(1, 256), help="vCPUs each (default: the project's).")
@click.option("--memory", type=Size("m"), help="RAM each, e.g. 2G (default: the project's).")
@click.option(
    "--host-access/--no-host-access",
    default=None,
    help="Let the VMs reach this host's loopback services (and so other VMs' SSH ports) "
    "through its gateway. Default: the project's setting (isolated unless it was created "
    "with --host-access).",
)
@click.option("--no-wait", is_flag=True, help="Return once the VMs are booting.")
@click.option("--no-start", is_flag=True, help="Only create them (disk, seed, VM); do not boot.")
@click.option("--force", is_flag=True, help="Create even if the host would be oversubscribed.")
@click.option("--cold", is_flag=True, help="Boot each from the template's disk, never warm.")
def create(
    project: str,
    tasks: tuple[str, ...],
    parallel: int | None,
    cpus: int | None,
    memory: int | None,
    host_access: bool | None,
    no_wait: bool,
    no_start: bool,
    force: bool,
    cold: bool,
) -> None:
    """Create TASKS from PROJECT in parallel; exit 1 if any failed.

    Capacity is checked once for all of them (before anything is created); each item then
    succeeds or is rolled back on its own.

    \b
    Example: agent-swarm bulk create myapp fix-login fix-logout add-tests
    """
    from agent_swarm import bulk as bulk_mod
    from agent_swarm import capacity

    app = obj()
    names = list(dict.fromkeys(tasks))
    dupes = [n for n in names if tasks.count(n) > 1]
    memory_mib = memory >> 20 if memory else None
    p = app.registry.get_project(project)
    core = app.core
    notice = core.provider_of(p).startup_notice()  # probed once, not in every worker
    if notice and not no_start:
        app.info(notice)
    per_vm = capacity.Demand(cpus or p.cpus, memory_mib or p.memory_mib, 1)
    start = not no_start
    if start and not force:
        total = capacity.Demand()
        for _n in names:
            total = total + per_vm
        core.capacity.check(total, what=f"creating {len(names)} task VMs", provider=p.provider)
    n = parallel or capacity.default_parallel(capacity.host(), len(names), per_vm, booting=start)
    live = bulk_mod.LiveLines(names)
    app.info(f"creating {len(names)} task VMs from {project}, {n} at a time")
    writer = bulk_mod.SshConfigWriter()

    def work(name: str, progress: Callable[[str], None]) -> str:
        with bulk_mod.worker_core(progress) as w:
            t = w.tasks.create(
                project,
                name,
                cpus=cpus,
                memory_mib=memory_mib,
                host_access=host_access,
                wait=False,
                start=start,
                check_capacity=False,  # checked above for all of them
                cold=cold,
            )
            writer.item_done(w)  # reachable by its alias while it boots
            if start and not no_wait:
                w.tasks.wait_ready(name, resumed=bool(t.warm_from))
            if not start:
                return f"created (generation {t.generation}, not started)"
            state = "starting" if no_wait else "ready"
            if t.warm_from:
                state += " (warm)"
            try:
                ep = w.vms.endpoint("task", name)
                where = f" ({ep.host}:{ep.port})"
            except AgentSwarmError:
                where = ""  # an address that appears later
            return f"{state}: ssh {name}.agent-swarm{where}"

    try:
        results = bulk_mod.run_parallel(names, work, parallel=n, live=live)
    finally:
        warning = writer.finish(core)
    if warning:
        app.info(warning)
    for d in dupes:
        app.info(f"note: {d} was named more than once; created once")
    _finish(results, "created")


@bulk.command("delete")
@click.argument("tasks", nargs=-1, type=TASK)
@click.option("--project", type=PROJECT, help="Delete every task of this project.")
@click.option("--parallel", type=click.IntRange(1, 64), help="Max concurrent deletes (default 8).")
def delete(tasks: tuple[str, ...], project: str | None, parallel: int | None) -> None:
    """Delete TASKS (or all tasks of --project) in parallel; exit 1 if any failed."""
    from agent_swarm import bulk as bulk_mod

    if not tasks and not project:
        raise click.UsageError("name the tasks to delete, or use --project NAME")
    app = obj()
    names = list(dict.fromkeys(tasks))
    if project:
        app.registry.get_project(project)
        names += [t.name for t in app.registry.list_tasks(project) if t.name not in names]
    if not names:
        app.emit([], f"Project {project} has no tasks.")
        return
    wanted = set(names)
    for provider in {t.provider for t in app.registry.list_tasks() if t.name in wanted}:
        app.core.provider(provider)  # fail early when a provider is unreachable
    live = bulk_mod.LiveLines(names)
    writer = bulk_mod.SshConfigWriter()

    def work(name: str, progress: Callable[[str], None]) -> str:
        with bulk_mod.worker_core(progress) as w:
            progress("deleting")
            w.tasks.delete(name)
            writer.item_done(w)
            return "deleted"

    try:
        results = bulk_mod.run_parallel(names, work, parallel=parallel or 8, live=live)
    finally:
        warning = writer.finish(app.core)
    if warning:
        app.info(warning)
    _finish(results, "deleted")


@bulk.command("fork")
@click.argument("task", type=TASK)
@click.argument("new", nargs=-1, required=True, type=TASK)
@click.option("--no-wait", is_flag=True, help="Return before SSH answers in the new tasks.")
@click.option("--force", is_flag=True, help="Fork even if the host would be oversubscribed.")
@click.pass_context
def fork(ctx: click.Context, task: str, new: tuple[str, ...], no_wait: bool, force: bool) -> None:
    """Branch running task TASK into the NEW tasks from one saved state (the same as
    `agent-swarm fork TASK NEW...`)."""
    from agent_swarm.cli.commands.tasks import fork as fork_cmd

    ctx.invoke(fork_cmd, task=task, new=new, no_wait=no_wait, force=force)
