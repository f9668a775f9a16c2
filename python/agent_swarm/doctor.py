"""`agent-swarm doctor`: find what a crash (or a hand-edited host) left inconsistent, explain
it, and with ``--fix`` repair it.

Sources of truth compared: the registry (VM rows, ports, generations), the operations journal
(intent recorded before every create/delete/seal/restore), the provider's domains and the
files under ``$AGENT_SWARM_HOME``. Each finding names its subject, what is wrong and what
``--fix`` does; fixes only touch the subject, never other VMs, and each is idempotent.

Interrupted operations (their process is gone) are settled first:

* ``create`` past registration → the half-created VM is removed (the command never reported
  success); ``create`` that had not registered yet → only the journal entry goes.
* ``delete`` → finished.
* ``seal`` → rolled forward once the generation is registered (the project gets its fresh
  overlay and seed), else rolled back (the disk renamed back).
* ``restore`` → the provider completes or refuses a revert on its own; the entry is cleared.
* ``gc`` → cleared; running gc again finishes it.

Each journaled operation says how it is settled (``Operation.recover`` in
:mod:`agent_swarm.journal` and its subclasses in :mod:`agent_swarm.ops`); doctor dispatches.

Operations whose process is alive are reported as busy and their VMs left alone.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from agent_swarm import procs
from agent_swarm.doctor_checks import Checks, Finding
from agent_swarm.errors import AgentSwarmError
from agent_swarm.models import JournalEntry
from agent_swarm.textsafe import sanitize

if TYPE_CHECKING:
    from agent_swarm.core import Core
    from agent_swarm.providers.base import Provider, VMStatus


class Doctor(Checks):
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg
        self.layout = core.layout

    # ---- diagnosis -----------------------------------------------------------------------
    def _providers(self) -> tuple[dict[str, Provider], list[Finding]]:
        """Every provider a VM row names, and this platform's default (orphans of a VM
        whose row is gone live there); one that cannot be reached is a finding, not a
        failure of the others."""
        out: dict[str, Provider] = {}
        findings = []
        used = set(self.core.used_providers())
        for name in sorted(used | {self.core.default_provider_name()}):
            try:
                out[name] = self.core.provider(name)
            except AgentSwarmError as exc:
                if name not in used:
                    continue  # no VM of ours uses it: nothing to check there
                hint = f" ({exc.hint})" if exc.hint else ""
                findings.append(
                    Finding(
                        "provider-unavailable",
                        f"provider {name}",
                        f"{exc.message}{hint}; its VMs were not checked",
                        None,
                    )
                )
        return out, findings

    def diagnose(self) -> list[Finding]:
        out: list[Finding] = []
        skip: set[tuple[str, str]] = set()
        for e in self.reg.journal():
            skip.add((e.kind, e.name))  # its operation (live or interrupted) owns it
            if procs.alive(e.pid, e.pid_start):
                out.append(
                    Finding(
                        "busy",
                        f"{e.kind} {e.name}",
                        f"{e.op} in progress (process {e.pid}, step {e.step!r}, "
                        f"since {e.started_at}); left alone",
                        None,
                    )
                )
            else:
                out.append(self._interrupted(e))
        projects = {p.name: p for p in self.reg.list_projects()}
        tasks = {t.name: t for t in self.reg.list_tasks()}
        known = {("project", n) for n in projects} | {("task", n) for n in tasks}

        providers, unreachable = self._providers()
        out += unreachable
        live: dict[str, dict[tuple[str, str], VMStatus]] = {}
        for pname, prov in providers.items():
            try:
                live[pname] = prov.list_ours()
            except AgentSwarmError as exc:
                out.append(Finding("provider-unavailable", f"provider {pname}", exc.message, None))
                continue
            for key, st in sorted(live[pname].items()):
                if key in known or key in skip:
                    continue
                if key[0] == "warm":  # a warm template's VM: owned by its project's `warm`
                    project = key[1].rpartition(".")[0]
                    if ("project", project) in skip:
                        continue
                out.append(self._orphan_vm(prov, key, st))

        for kind in ("project", "task"):
            root = self.layout.root(kind)
            if not root.is_dir():
                continue
            for child in sorted(root.iterdir()):
                key = (kind, child.name)
                if key in known or key in skip:
                    continue
                out.append(
                    Finding(
                        "orphan-files",
                        str(child),
                        f"files of a {kind} VM with no registry row",
                        "remove them",
                        partial(shutil.rmtree, child, ignore_errors=True),
                        vm=key,
                        recheck=partial(self._unregistered, *key),
                    )
                )

        vms: list[tuple[str, Any]] = [("task", t) for t in tasks.values()]
        vms += [("project", p) for p in projects.values()]
        for kind, vm in vms:
            if (kind, vm.name) in skip:
                continue
            vm_prov = providers.get(vm.provider)
            if vm_prov is not None and vm.provider in live:
                spec = self.core.vms.spec(kind, vm)
                out += self._check_vm(vm_prov, kind, vm.name, spec, live[vm.provider])
            if kind == "project":
                out += self._check_generations(vm.name)

        for port, kind, owner in self.reg.ports():
            if (kind, owner) not in known and (kind, owner) not in skip:
                out.append(
                    Finding(
                        "orphan-port",
                        f"port {port}",
                        f"reserved for {kind} {owner}, which does not exist",
                        "release it",
                        partial(self.reg.remove_port, port),
                        vm=(kind, owner),
                        recheck=partial(self._unregistered, kind, owner),
                    )
                )
        out += self._temp_files()
        out += self._ssh_config()
        return out

    def _orphan_vm(self, prov: Provider, key: tuple[str, str], st: VMStatus) -> Finding:
        kind, name = key
        label = st.label or f"{prov.name} VM {kind}-{name}"
        owner = prov.owner_of(kind, name)
        if owner is not None and owner != str(self.layout.home):
            return Finding(
                "foreign-domain",
                label,
                f"its name looks like ours, but it belongs to the state directory "
                f"{owner}; left alone",
                None,
            )
        detail = f"a {prov.name} VM ({st.state}) of this state directory with no registry row"
        vm: tuple[str, str] = key
        recheck: Callable[[], bool] | None = partial(self._unregistered, kind, name)
        if kind == "warm":  # no row of its own: settled under its project's journal slot
            project = name.rpartition(".")[0]
            detail = f"the VM of an unfinished warm template of project {project} ({st.state})"
            vm, recheck = ("project", project), None
        return Finding(
            "orphan-domain",
            label,
            detail,
            "power it off and remove it",
            partial(prov.delete, self.core.vms.stub_spec(kind, name)),
            vm=vm,
            recheck=recheck,
        )

    def _interrupted(self, e: JournalEntry) -> Finding:
        what = (
            f"{e.op} interrupted at step {e.step!r} (process {e.pid} is gone, "
            f"started {e.started_at})"
        )
        try:
            if e.provider:  # settling it needs the VM's provider: none half-done without it
                self.core.provider(e.provider)
            r = self.core.operation(e.op).recover(e)
        except AgentSwarmError as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            return Finding(
                "interrupted", f"{e.kind} {e.name}", f"{what}; {exc.message}{hint}", None
            )
        return Finding("interrupted", f"{e.kind} {e.name}", what + r.detail, r.fix, r.action)

    # ---- repair --------------------------------------------------------------------------
    def fix(self, findings: list[Finding]) -> None:
        from agent_swarm.errors import Busy

        for f in findings:
            if f.action is None:
                continue
            entry = None
            try:
                if f.vm is not None:
                    try:
                        entry = self.reg.journal_begin("doctor", *f.vm)
                    except Busy as exc:
                        f.error = f"left alone: {exc.message}"
                        continue
                    if f.recheck is not None and not f.recheck():
                        f.fixed = True
                        f.detail += " (resolved meanwhile)"
                        continue
                f.action()
                f.fixed = True
            except (AgentSwarmError, OSError) as exc:
                f.error = sanitize(str(exc), keep_newlines=False)  # may quote guest text
            finally:
                if entry is not None:
                    with contextlib.suppress(AgentSwarmError):
                        self.reg.journal_end(entry)
        with contextlib.suppress(AgentSwarmError, OSError):
            self.core.vms.refresh_ssh_config()
