from __future__ import annotations

from dataclasses import asdict

import click

from agent_swarm.cli.commands._common import PROJECT, TASK, Size
from agent_swarm.cli.commands.project import _size
from agent_swarm.cli.context import obj, table


@click.command()
@click.argument("project", type=PROJECT)
@click.argument("task", type=TASK)
@click.option("--cpus", type=click.IntRange(1, 256), help="vCPUs (default: the project's).")
@click.option("--memory", type=Size("m"), help="RAM, e.g. 4G (default: the project's).")
@click.option(
    "--host-access/--no-host-access",
    default=None,
    help="Let the VM reach this host's loopback services (and so other VMs' SSH ports) "
    "through its gateway. Default: the project's setting (isolated unless it was created "
    "with --host-access).",
)
@click.option("--no-wait", is_flag=True, help="Return once the VM is booting.")
@click.option("--no-start", is_flag=True, help="Only create it (disk, seed, VM); do not boot.")
@click.option("--force", is_flag=True, help="Boot even if the host would be oversubscribed.")
@click.option(
    "--cold",
    is_flag=True,
    help="Boot from the template's disk even when a warm template could resume it.",
)
def create(
    project: str,
    task: str,
    cpus: int | None,
    memory: int | None,
    host_access: bool | None,
    no_wait: bool,
    no_start: bool,
    force: bool,
    cold: bool,
) -> None:
    """Create task VM TASK cloned copy-on-write from PROJECT's newest template.

    When that generation is warm (`project warm`) and the task has its vCPUs and RAM, the
    task resumes from the template's memory with a new identity instead of booting.
    """
    app = obj()
    t = app.core.tasks.create(
        project,
        task,
        cpus=cpus,
        memory_mib=(memory >> 20) if memory else None,
        host_access=host_access,
        wait=not no_wait,
        start=not no_start,
        force=force,
        cold=cold,
    )
    app.progress.done()
    state = "created (not started)" if no_start else "starting" if no_wait else "ready"
    how = "resumed from the warm template of" if t.warm_from else "clone of"
    app.emit(
        asdict(t) | {"host_key": None},
        f"Task {task} is {state} "
        f"({how} {project} generation {t.generation}): `agent-swarm ssh {task}`.",
    )


@click.command()
@click.argument("task", type=TASK)
@click.argument("new", nargs=-1, required=True, type=TASK)
@click.option("--no-wait", is_flag=True, help="Return before SSH answers in the new tasks.")
@click.option("--force", is_flag=True, help="Fork even if the host would be oversubscribed.")
def fork(task: str, new: tuple[str, ...], no_wait: bool, force: bool) -> None:
    """Branch running task TASK into NEW tasks (one or more), each a running copy of its
    memory and disk at one moment, with its own identity (host key, hostname, machine-id).

    TASK is paused while its memory is saved once and its disk copied (a second or two),
    then runs on. Example: agent-swarm fork fix-login try-a try-b
    """
    app = obj()
    forks = app.core.fork.fork(task, list(new), wait=not no_wait, force=force)
    app.progress.done()
    names = ", ".join(t.name for t in forks)
    app.emit(
        [asdict(t) | {"host_key": None, "forked_from": task} for t in forks],
        f"Forked {task} into {names}: `agent-swarm ssh {forks[0].name}`.",
    )


@click.command("list")
@click.option("--project", type=PROJECT, help="Only tasks of this project.")
def list_(project: str | None) -> None:
    """List task VMs: project, template generation, live state, SSH endpoint, disk used."""
    app = obj()
    views = app.core.views.tasks(project) if app.registry.list_tasks(project) else []
    app.emit(
        [asdict(v) for v in views],
        table(
            ["NAME", "PROJECT", "GEN", "STATE", "SSH", "DISK USED"],
            [
                [
                    v.name,
                    v.project,
                    str(v.generation),
                    v.state + (f" ({v.reason})" if v.reason else ""),
                    v.ssh or "-",
                    _size(v.disk_bytes),
                ]
                for v in views
            ],
        )
        if views
        else "No task VMs. Create one with `agent-swarm create PROJECT TASK`.",
    )


@click.command()
@click.argument("task", type=TASK)
@click.option("--force", is_flag=True, help="Start even if the host would be oversubscribed.")
def start(task: str, force: bool) -> None:
    """Start a stopped task VM and wait until SSH answers."""
    app = obj()
    app.core.tasks.start(task, force=force)
    app.progress.done(f"Task {task} is running.")


@click.command()
@click.argument("task", type=TASK)
@click.option("-f", "--force", is_flag=True, help="Power off at once instead of shutting down.")
def stop(task: str, force: bool) -> None:
    """Stop a task VM (graceful ACPI shutdown, forced after a timeout)."""
    app = obj()
    app.core.tasks.stop(task, force=force)
    app.progress.done(f"Task {task} stopped.")


@click.command()
@click.argument("task", type=TASK)
def delete(task: str) -> None:
    """Delete a task VM, its disk, seed ISO and checkpoints."""
    app = obj()
    app.core.tasks.delete(task)
    app.emit({"name": task, "deleted": True}, f"Task {task} deleted.")
