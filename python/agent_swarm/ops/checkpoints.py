"""Checkpoints of a VM (disk, and memory where the provider can), through the provider."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agent_swarm.errors import InvalidState
from agent_swarm.journal import Operation, Recovery
from agent_swarm.models import JournalEntry, VMSpec
from agent_swarm.names import validate_name

if TYPE_CHECKING:
    from agent_swarm.core import Core
    from agent_swarm.providers.base import Provider


class RestoreOp(Operation):
    op = "restore"
    steps = ("begin", "reverting")

    def recover(self, e: JournalEntry) -> Recovery:
        # The provider completes or refuses a revert on its own.
        return Recovery(
            "", "clear it (the VM is as its provider left it)", lambda: self.reg.journal_end(e.id)
        )


class Checkpoints:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg
        self.op = RestoreOp(core)

    def _vm(self, name: str) -> tuple[Provider, VMSpec]:
        vms = self.core.vms
        kind = vms.kind_of(name)
        vm = vms.row(kind, name)
        return self.core.provider_of(vm), vms.spec(kind, vm)

    def create(self, name: str, cp: str | None = None) -> str:
        prov, spec = self._vm(name)
        self.reg.ensure_idle(spec.kind, spec.name)
        cp = cp or time.strftime("cp-%Y%m%d-%H%M%S")
        validate_name(cp, "checkpoint name")
        prov.checkpoint(spec, cp)
        return cp

    def restore(self, name: str, cp: str | None = None) -> str:
        prov, spec = self._vm(name)
        cps = prov.list_checkpoints(spec)
        if not cps:
            raise InvalidState(
                f"{name!r} has no checkpoints",
                hint=f"make one with `agent-swarm checkpoint {name}`",
            )
        if cp is None:
            cp = str(cps[-1]["name"])
        elif cp not in {c["name"] for c in cps}:
            raise InvalidState(
                f"{name!r} has no checkpoint {cp!r}", hint=f"see `agent-swarm checkpoints {name}`"
            )
        with self.op.run(spec.kind, spec.name, detail=cp) as op:
            op.step("reverting")
            prov.restore(spec, cp)
        return cp

    def list(self, name: str) -> list[dict[str, Any]]:
        prov, spec = self._vm(name)
        return prov.list_checkpoints(spec)
