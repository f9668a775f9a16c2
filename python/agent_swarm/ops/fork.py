"""Forking a running task: one or more new running tasks that start from its memory and disk
at one moment, for an agent that wants to try several approaches from the same point.

The source is paused once: its state (RAM included) is written to a file and its disk is
copied to each fork's directory while it is paused (the disks are flushed and unchanging
then; a reflink on XFS/Btrfs/APFS, else a copy of the overlay, i.e. of what the task wrote);
then it runs on. Each fork is a task on the source's generation (and warm template, if the
source resumed from one), defined to start in the incoming state, loaded from that one file,
resumed, and given its own identity through the guest agent exactly like a warm clone.

Journal op ``fork`` on each new task (detail: the source). Recovery resumes a source left
paused and removes the half-made fork.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent_swarm.errors import InvalidState, UnsupportedByProvider
from agent_swarm.journal import Operation, Recovery
from agent_swarm.models import InstanceState, JournalEntry, Task, VMSpec
from agent_swarm.names import validate_name

if TYPE_CHECKING:
    from agent_swarm.core import Core
    from agent_swarm.ssh import keys


class ForkOp(Operation):
    op = "fork"
    steps = ("begin", "registered")

    def recover(self, e: JournalEntry) -> Recovery:
        core = self.core

        def settle() -> None:
            from agent_swarm.errors import InstanceNotFound

            try:
                src = self.reg.get_task(e.detail)
            except InstanceNotFound:
                src = None  # deleted meanwhile: nothing to resume
            if src is not None:
                prov = core.provider_of(src)
                spec = core.vms.spec("task", src)
                if prov.status(spec).state is InstanceState.PAUSED:
                    prov.start(spec)  # resumes a paused VM (a failure keeps the entry)
            core.vms.remove(e.kind, e.name, None, None, provider_name=e.provider or None)
            self.reg.journal_end(e.id)

        return Recovery(
            f" (a fork of task {e.detail})",
            "make sure the source runs; remove the half-made fork",
            settle,
        )


class Fork:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg
        self.op = ForkOp(core)

    def fork(
        self, source: str, names: list[str], *, wait: bool = True, force: bool = False
    ) -> list[Task]:
        from agent_swarm import native
        from agent_swarm.guest import new_host_key, write_seed
        from agent_swarm.ops.vms import check_space

        core = self.core
        names = list(dict.fromkeys(names))
        for n in names:
            validate_name(n, "task name")
        if source in names:
            raise InvalidState(f"a fork needs a new name, not {source!r}")
        src = self.reg.get_task(source)
        prov = core.provider_of(src)
        if not prov.capabilities.warm_clones:
            raise UnsupportedByProvider("fork", provider=prov.name)
        src_spec = core.vms.spec("task", src)
        st = prov.status(src_spec)
        if st.state is not InstanceState.RUNNING:
            raise InvalidState(
                f"task {source!r} is {st.state.value}: fork branches a running task",
                hint=f"start it: `agent-swarm start {source}`",
            )
        check_space(
            f"cannot fork task {source} (its {src.memory_mib} MiB of memory is saved to disk once)",
            need=src.memory_mib << 20,
        )
        if not force:
            from agent_swarm import capacity

            total = capacity.Demand()
            for _n in names:
                total = total + capacity.Demand(src.cpus, src.memory_mib, 1)
            core.capacity.check(total, what=f"forking {len(names)} task VMs", provider=src.provider)
        hosts: dict[str, keys.KeyPair] = {}
        forks: dict[str, tuple[int, Task, VMSpec]] = {}
        state: Path | None = None
        try:
            with contextlib.ExitStack() as stack:
                for n in names:
                    hosts[n] = new_host_key("task", n)
                    entry, t = core.vms.register(
                        prov,
                        "task",
                        n,
                        {
                            "project": src.project,
                            "provider": src.provider,
                            "cpus": src.cpus,
                            "memory_mib": src.memory_mib,
                            "network": src.network,
                            "host_access": src.host_access,
                            "host_key": hosts[n].public_openssh,
                            "warm_from": src.warm_from,
                            "generation": src.generation,
                        },
                        start=True,
                        op="fork",
                        detail=source,
                    )
                    assert isinstance(t, Task)
                    op = stack.enter_context(self.op.run("task", n, source, entry=entry))
                    spec = core.vms.spec("task", t)
                    d = core.layout.vm_dir("task", n)
                    if d.exists():
                        shutil.rmtree(d)
                    d.mkdir(parents=True, mode=0o700)
                    forks[n] = (entry, t, spec)
                    op.step("registered")
                state = core.layout.vm_dir("task", names[0]) / "fork.state"

                def copy_disks() -> None:
                    for _n, (_e, _t, spec) in forks.items():
                        native.clone_file(src_spec.disk, spec.disk)

                core.progress(f"task {source}: pausing to save its memory and disk")
                paused = prov.save_running_state(
                    src_spec,
                    state,
                    shared_memory=False,
                    keep_running=True,
                    while_paused=copy_disks,
                )
                core.progress(
                    f"task {source}: running again (paused {paused:.2f} s; "
                    f"{state.stat().st_size >> 20} MiB saved)"
                )
                for n, (_e, _t, spec) in forks.items():
                    t0 = time.monotonic()
                    write_seed(spec, hosts[n], project=src.project, first_boot_setup=False)
                    # (a task resumed from a warm template, and so its forks, always maps
                    # the template's RAM file privately: the same RAM layout on every boot)
                    fspec = dataclasses.replace(spec, incoming=True)
                    prov.define(fspec)
                    core.warm.resume(prov, fspec, state, hosts[n], f"task {n}", shared_memory=False)
                    prov.define(spec)  # its next boot: an ordinary one
                    core.progress(
                        f"task {n}: forked from {source} in {time.monotonic() - t0:.2f} s"
                    )
                core.vms.refresh_ssh_config()
        except BaseException:
            for n in forks:
                with contextlib.suppress(Exception):
                    core.vms.rollback("task", n)
            raise
        finally:
            if state is not None:
                state.unlink(missing_ok=True)
        if wait:
            for n in names:
                core.tasks.wait_ready(n, resumed=True)
        return [forks[n][1] for n in names]
