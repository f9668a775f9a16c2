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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_swarm import procs
from agent_swarm.errors import AgentSwarmError
from agent_swarm.models import JournalEntry, VMSpec
from agent_swarm.textsafe import sanitize

if TYPE_CHECKING:
    from agent_swarm.core import Core
    from agent_swarm.providers.base import Provider, VMStatus

TEMP_MAX_AGE = 600  # seconds: younger temp files may belong to a write in progress


@dataclass
class Finding:
    problem: str  # interrupted, busy, orphan-domain, orphan-files, missing-domain, ...
    subject: str
    detail: str
    fix: str | None  # what --fix does; None: nothing automatic (explained in detail)
    action: Callable[[], None] | None = field(default=None, repr=False)
    fixed: bool = False
    error: str | None = None
    # The VM the fix touches: --fix holds that VM's journal slot while it re-checks the
    # problem and repairs it, so a create or seal starting meanwhile is never hit.
    vm: tuple[str, str] | None = field(default=None, repr=False)
    recheck: Callable[[], bool] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "subject": self.subject,
            "detail": self.detail,
            "fix": self.fix,
            "fixed": self.fixed,
            "error": self.error,
        }


class Doctor:
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

    def _ssh_config(self) -> list[Finding]:
        """ssh_config and known_hosts as the registry says (a bulk killed before its one
        write at the end leaves them stale)."""
        from agent_swarm.ssh import config

        try:
            text, hosts = config.render(config.entries(self.reg))
            stale = (
                config.config_path().read_text() != text
                or config.known_hosts_path().read_text() != hosts
            )
        except FileNotFoundError:
            stale = bool(config.entries(self.reg))
        except (AgentSwarmError, OSError):
            return []  # unrenderable (a path ssh cannot represent): `ssh-config` says why
        if not stale:
            return []
        return [
            Finding(
                "stale-ssh-config",
                str(config.config_path()),
                "does not list the VMs the registry has (an interrupted bulk?)",
                "write it again from the registry",
                self._write_ssh_config,
            )
        ]

    def _write_ssh_config(self) -> None:
        self.core.vms.refresh_ssh_config(force=True)

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
        return Finding(
            "orphan-domain",
            label,
            f"a {prov.name} VM ({st.state}) of this state directory with no registry row",
            "power it off and remove it",
            partial(prov.delete, self.core.vms.stub_spec(kind, name)),
            vm=key,
            recheck=partial(self._unregistered, kind, name),
        )

    # ---- re-checks, run by --fix while holding the VM's journal slot ----------------------
    def _unregistered(self, kind: str, name: str) -> bool:
        try:
            self.core.vms.row(kind, name)
        except AgentSwarmError:
            return True
        return False

    def _unknown_generation(self, project: str, path: str) -> bool:
        return all(g.path != path for g in self.reg.list_generations(project))

    def _still(self, problem: str, prov: Provider, kind: str, name: str, spec: VMSpec) -> bool:
        if self._unregistered(kind, name):
            return False
        if problem == "missing-disk":
            return not spec.disk.exists()
        if problem == "missing-domain":  # (status() never raises: a failure is not "gone")
            return spec.disk.exists() and (kind, name) not in prov.list_ours()
        if problem == "no-network":
            return prov.runtime_problem(spec) is not None
        return True

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

    def _check_vm(
        self,
        prov: Provider,
        kind: str,
        name: str,
        spec: VMSpec,
        live: dict[tuple[str, str], VMStatus],
    ) -> list[Finding]:
        out = self._check_vm_state(prov, kind, name, spec, live)
        for f in out:
            f.vm = (kind, name)
            f.recheck = partial(self._still, f.problem, prov, kind, name, spec)
        return out

    def _check_vm_state(
        self,
        prov: Provider,
        kind: str,
        name: str,
        spec: VMSpec,
        live: dict[tuple[str, str], VMStatus],
    ) -> list[Finding]:
        subject = f"{kind} {name}"
        vms = self.core.vms
        if not spec.disk.exists():
            if kind == "project":
                latest = self.reg.latest_generation(name)
                if latest is not None and Path(latest.path).exists():
                    p = self.reg.get_project(name)

                    def rebuild() -> None:
                        self.core.seal.finish(p, spec, Path(latest.path), None)
                        prov.define(spec)

                    return [
                        Finding(
                            "missing-disk",
                            subject,
                            f"its disk {spec.disk} is gone",
                            f"start it afresh on generation {latest.generation}",
                            rebuild,
                        )
                    ]
                if self.reg.list_tasks(name):
                    return [Finding("missing-disk", subject, f"{spec.disk} is gone", None)]
            return [
                Finding(
                    "missing-disk",
                    subject,
                    f"its disk {spec.disk} is gone; the VM cannot run",
                    f"remove the {kind} (its VM, files, registry row)",
                    lambda: vms.remove(kind, name, spec, None),
                )
            ]
        if (kind, name) not in live:
            if not spec.seed.exists():
                return [
                    Finding(
                        "missing-domain",
                        subject,
                        f"no {prov.name} VM and no seed {spec.seed}",
                        f"remove the {kind}" if kind == "task" else None,
                        (lambda: vms.remove(kind, name, spec, None)) if kind == "task" else None,
                    )
                ]
            return [
                Finding(
                    "missing-domain",
                    subject,
                    f"registered with a disk, but {prov.name} has no VM for it",
                    "define the VM again from the registry",
                    lambda: prov.define(spec),
                )
            ]
        problem = prov.runtime_problem(spec)
        if problem:
            return [
                Finding(
                    "no-network",
                    subject,
                    problem,
                    "repair it while it runs (the provider's start)",
                    lambda: prov.start(spec),
                )
            ]
        return []

    def _check_generations(self, project: str) -> list[Finding]:
        out = []
        gens = self.reg.list_generations(project)
        registered = {g.path for g in gens}
        for g in gens:
            if not Path(g.path).exists():
                users = [
                    t.name for t in self.reg.list_tasks(project) if t.generation == g.generation
                ]
                out.append(
                    Finding(
                        "missing-generation",
                        f"project {project} generation {g.generation}",
                        f"{g.path} is gone"
                        + (f"; tasks {', '.join(users)} cannot start" if users else ""),
                        None,
                    )
                )
        for f in self.layout.generation_files(project):
            if str(f) in registered:
                continue
            out.append(
                Finding(
                    "orphan-generation",
                    str(f),
                    "a template generation file the registry does not know",
                    "remove it",
                    partial(f.unlink, missing_ok=True),
                    vm=("project", project),
                    recheck=partial(self._unknown_generation, project, str(f)),
                )
            )
        return out

    def _temp_files(self) -> list[Finding]:
        out = []
        now = time.time()
        cands: list[Path] = []
        for r in self.layout.temp_roots():
            if r.is_dir():
                cands += list(r.glob(".*.tmp")) + list(r.glob("*/.*.tmp"))
        for f in sorted(set(cands)):
            with contextlib.suppress(OSError):
                if now - f.stat().st_mtime > TEMP_MAX_AGE:
                    out.append(
                        Finding(
                            "temp-file",
                            str(f),
                            "left by an interrupted write",
                            "remove it",
                            partial(f.unlink, missing_ok=True),
                        )
                    )
        return out

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
