"""Sealing a project: its disk becomes the next read-only template generation, and the
project goes on on a fresh clone of it (a new instance: no setup again).

Steps (journal op ``seal``): boot if needed, reset the guest's identity from inside
(``resetting`` → ``identity-reset``), stop (``stopped``), rename the disk to the generation
file (``sealing``, detail = its path → ``renamed``), register it (``registered``), fresh
project disk (``overlay``) and seed (``seeded``). Recovery (:meth:`SealOp.recover`) rolls
forward once the generation file exists, else back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agent_swarm import disks
from agent_swarm.guest import new_host_key, write_seed
from agent_swarm.journal import Op, Operation, Recovery
from agent_swarm.models import InstanceState, JournalEntry, Project, VMSpec

if TYPE_CHECKING:
    from agent_swarm.core import Core


class SealOp(Operation):
    op = "seal"
    steps = (
        "begin",
        "resetting",
        "identity-reset",
        "stopped",
        "sealing",
        "renamed",
        "registered",
        "overlay",
        "seeded",
    )
    # What recovery reads: how far the identity reset got, and the generation's path.
    durable = frozenset({"resetting", "identity-reset", "stopped", "sealing"})

    def __init__(self, core: Core, seal: Seal) -> None:
        super().__init__(core)
        self.seal = seal

    def recover(self, e: JournalEntry) -> Recovery:
        core = self.core
        p = self.reg.get_project(e.name)
        prov = core.provider_of(p)
        spec = core.vms.spec("project", p)
        gen_path = Path(e.detail) if e.detail else None
        registered = gen_path is not None and any(
            g.path == str(gen_path) for g in self.reg.list_generations(e.name)
        )

        def clear() -> None:
            self.reg.journal_end(e.id)

        if registered and gen_path is not None:

            def forward() -> None:
                self.seal.finish(p, spec, gen_path, None)
                clear()

            return Recovery(
                f"; {gen_path.name} is sealed",
                "finish sealing (fresh project disk and seed)",
                forward,
            )
        if gen_path is not None and gen_path.exists() and not spec.disk.exists():

            def register() -> None:
                self.reg.add_generation(p.name, str(gen_path), format=self.seal.fmt(p))
                self.seal.finish(p, spec, gen_path, None)
                clear()

            return Recovery(
                f"; the disk is already {gen_path.name} but not registered",
                "finish sealing (register it, fresh project disk and seed)",
                register,
            )
        if e.step in ("identity-reset", "stopped", "sealing") or (
            e.step == "resetting"
            and not core.guest.answers(prov, spec, p.host_key, f"project {p.name}")
        ):
            # The identity is reset (or the VM never booted): sealing is the only way on.
            def seal() -> None:
                prov.stop(spec, force=True)
                self.seal.rename_and_finish(p, spec, Op(self.reg, e.id, "seal", self.durable))
                clear()

            return Recovery(
                "; the identity was reset but the disk not sealed yet",
                "stop the VM and seal it",
                seal,
            )
        return Recovery(
            "; nothing was sealed (seal again with `agent-swarm project stop`)", "clear it", clear
        )


class Seal:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg
        self.op = SealOp(core, self)

    def fmt(self, p: Project) -> str:
        return self.core.provider_of(p).capabilities.disk_format

    def seal(self, name: str, *, timeout: float = 120) -> int | None:
        """Stop the project and seal its disk; the new generation number (None: nothing new
        to seal)."""
        core = self.core
        p = self.reg.get_project(name)
        prov = core.provider_of(p)
        backend = disks.backend_for(prov.capabilities.disk_format)
        spec = core.vms.spec("project", p)
        state = prov.status(spec).state
        latest = self.reg.latest_generation(name)
        untouched = state is not InstanceState.RUNNING and backend.untouched(spec.disk)
        if untouched and latest is not None:
            core.progress(f"project {name}: already sealed (generation {latest.generation})")
            return None
        with self.op.run("project", name) as op:
            if untouched:
                # Never booted: nothing in the disk has an identity yet; seal it as it is.
                core.progress(f"project {name}: never booted; sealing its base as it is")
            else:
                if state is not InstanceState.RUNNING:
                    # Its identity must be reset from inside: boot it once more.
                    core.projects.start(name, force=True, in_op=True)
                op.step("resetting")
                core.guest.reset_identity(prov, spec, p.host_key)
                op.step("identity-reset")
                # From here the VM has no identity (nor SSH host keys): only sealing it makes
                # sense, so a failure leaves the entry for doctor to finish.
                op.keep_on_error = (
                    f"`agent-swarm doctor --fix` finishes sealing project {name} "
                    "(its identity is already reset)"
                )
                core.progress(f"project {name}: shutting down")
                prov.stop(spec, timeout=timeout)
            op.step("stopped")
            return self.rename_and_finish(p, spec, op)

    def rename_and_finish(self, p: Project, spec: VMSpec, op: Op) -> int:
        fmt = self.fmt(p)
        backend = disks.backend_for(fmt)
        latest = self.reg.latest_generation(p.name)
        n = (latest.generation if latest else 0) + 1
        gen_path = self.core.layout.generation(p.name, n, fmt)
        op.step("sealing", detail=str(gen_path))
        self.core.progress(f"project {p.name}: sealing template generation {n}")
        backend.seal(spec.disk, gen_path)
        op.step("renamed")
        try:
            self.reg.add_generation(p.name, str(gen_path), format=fmt)
        except BaseException:
            backend.unseal(gen_path, spec.disk)
            raise
        op.step("registered")
        op.keep_on_error = f"`agent-swarm doctor --fix` finishes sealing project {p.name}"
        self.finish(p, spec, gen_path, op)
        return n

    def finish(self, p: Project, spec: VMSpec, gen_path: Path, op: Op | None) -> None:
        """After a generation is registered: the project continues on a fresh clone of it,
        as a new instance of the sealed template. Idempotent (doctor)."""
        if not spec.disk.exists():
            disks.backend_for(self.fmt(p)).overlay(spec.disk, gen_path)
        if op:
            op.step("overlay")
        host = new_host_key("project", p.name)
        write_seed(spec, host, project=p.name, first_boot_setup=False)
        self.reg.set_host_key("project", p.name, host.public_openssh)
        if op:
            op.step("seeded")
        self.core.vms.refresh_ssh_config()
