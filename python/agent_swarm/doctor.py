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
* ``restore`` → libvirt completes or refuses a revert on its own; the entry is cleared.

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

from agent_swarm import paths, procs
from agent_swarm.errors import AgentSwarmError
from agent_swarm.models import JournalEntry, VMSpec
from agent_swarm.swarm import stub_spec
from agent_swarm.textsafe import sanitize

if TYPE_CHECKING:
    from agent_swarm.swarm import Swarm

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
    def __init__(self, swarm: Swarm) -> None:
        self.swarm = swarm
        self.reg = swarm.reg

    # ---- diagnosis -----------------------------------------------------------------------
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

        domains = self.swarm.provider.our_domains()
        have_domain = {(d["kind"], d["name"]) for d in domains}
        for d in domains:
            key = (d["kind"], d["name"])
            if key in known or key in skip:
                continue
            owner = self.swarm.provider.domain_home(d["domain"])
            if owner is not None and owner != str(paths.home()):
                out.append(
                    Finding(
                        "foreign-domain",
                        f"domain {d['domain']}",
                        f"its name looks like ours, but it belongs to the state directory "
                        f"{owner}; left alone",
                        None,
                    )
                )
                continue
            out.append(
                Finding(
                    "orphan-domain",
                    f"domain {d['domain']}",
                    f"a libvirt VM ({d['state']}) of this state directory with no registry row",
                    "power it off and undefine it",
                    partial(self.swarm.provider.delete, stub_spec(d["kind"], d["name"])),
                    vm=key,
                    recheck=partial(self._unregistered, *key),
                )
            )

        for kind, root in (
            ("project", paths.home() / paths.PROJECTS_DIR),
            ("task", paths.home() / paths.TASKS_DIR),
        ):
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

        for name, t in tasks.items():
            if ("task", name) in skip:
                continue
            out += self._check_vm("task", name, self.swarm.task_spec(t), have_domain)
        for name, p in projects.items():
            if ("project", name) in skip:
                continue
            out += self._check_vm("project", name, self.swarm.project_spec(p), have_domain)
            out += self._check_generations(name)

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
        return out

    # ---- re-checks, run by --fix while holding the VM's journal slot ----------------------
    def _unregistered(self, kind: str, name: str) -> bool:
        try:
            if kind == "project":
                self.reg.get_project(name)
            else:
                self.reg.get_task(name)
        except AgentSwarmError:
            return True
        return False

    def _unknown_generation(self, project: str, path: str) -> bool:
        return all(g.path != path for g in self.reg.list_generations(project))

    def _still(self, problem: str, kind: str, name: str, spec: VMSpec) -> bool:
        if self._unregistered(kind, name):
            return False
        if problem == "missing-disk":
            return not spec.disk.exists()
        if problem == "missing-domain":
            return spec.disk.exists() and not self.swarm.provider.is_defined(spec)
        if problem == "no-network":
            return self.swarm.provider.network_problem(spec) is not None
        return True

    def _row_created_by(self, e: JournalEntry) -> bool:
        """Did the interrupted create `e` already insert its registry row? (It may have been
        killed between the insert and recording the step.)"""
        try:
            row = self.reg.get_project(e.name) if e.kind == "project" else self.reg.get_task(e.name)
        except AgentSwarmError:
            return False
        return row.created_at >= e.started_at

    def _interrupted(self, e: JournalEntry) -> Finding:
        what = (
            f"{e.op} interrupted at step {e.step!r} (process {e.pid} is gone, "
            f"started {e.started_at})"
        )
        subject = f"{e.kind} {e.name}"

        def clear() -> None:
            self.reg.journal_end(e.id)

        if e.op == "create" and e.step == "begin" and not self._row_created_by(e):
            return Finding(
                "interrupted", subject, what + "; nothing was created", "clear it", clear
            )
        if e.op in ("create", "delete"):

            def remove() -> None:
                self.swarm.remove_vm(e.kind, e.name, None, None)
                clear()

            return Finding(
                "interrupted",
                subject,
                what,
                "remove the half-created VM" if e.op == "create" else "finish deleting it",
                remove,
            )
        if e.op == "seal":
            return self._interrupted_seal(e, subject, what, clear)

        # restore: libvirt finishes or refuses a revert on its own
        return Finding(
            "interrupted", subject, what, "clear it (the VM is as libvirt left it)", clear
        )

    def _interrupted_seal(
        self, e: JournalEntry, subject: str, what: str, clear: Callable[[], None]
    ) -> Finding:
        from agent_swarm.swarm import Op

        p = self.reg.get_project(e.name)
        spec = self.swarm.project_spec(p)
        gen_path = Path(e.detail) if e.detail else None
        registered = gen_path is not None and any(
            g.path == str(gen_path) for g in self.reg.list_generations(e.name)
        )
        op = Op(self.reg, e.id, "seal")
        if registered and gen_path is not None:

            def forward() -> None:
                self.swarm._finish_seal(p, spec, gen_path, None)
                clear()

            return Finding(
                "interrupted",
                subject,
                what + f"; {gen_path.name} is sealed",
                "finish sealing (fresh project overlay and seed)",
                forward,
            )
        if gen_path is not None and gen_path.exists() and not spec.disk.exists():

            def register() -> None:
                self.reg.add_generation(p.name, str(gen_path))
                self.swarm._finish_seal(p, spec, gen_path, None)
                clear()

            return Finding(
                "interrupted",
                subject,
                what + f"; the disk is already {gen_path.name} but not registered",
                "finish sealing (register it, fresh project overlay and seed)",
                register,
            )
        if e.step in ("identity-reset", "stopped", "sealing") or (
            e.step == "resetting" and not self._answers_ssh(p, spec)
        ):
            # The identity is reset (or the VM never booted): sealing is the only way on.
            def seal() -> None:
                self.swarm.provider.stop(spec, force=True)
                self.swarm._seal(p, spec, op)
                clear()

            return Finding(
                "interrupted",
                subject,
                what + "; the identity was reset but the disk not sealed yet",
                "stop the VM and seal it",
                seal,
            )
        return Finding(
            "interrupted",
            subject,
            what + "; nothing was sealed (seal again with `agent-swarm project stop`)",
            "clear it",
            clear,
        )

    def _answers_ssh(self, p: Any, spec: VMSpec) -> bool:
        """Does the VM still accept SSH with its pinned host key? (Then an interrupted identity
        reset had not removed the host keys yet, and can simply run again.)"""
        from agent_swarm.models import InstanceState

        if self.swarm.provider.status(spec)[0] is not InstanceState.RUNNING:
            return False
        try:
            self.swarm._ssh(spec, p.host_key, f"project {p.name}", timeout=20, quiet=True).close()
        except (AgentSwarmError, OSError):
            return False
        return True

    def _check_vm(
        self, kind: str, name: str, spec: VMSpec, have_domain: set[tuple[str, str]]
    ) -> list[Finding]:
        out = self._check_vm_state(kind, name, spec, have_domain)
        for f in out:
            f.vm = (kind, name)
            f.recheck = partial(self._still, f.problem, kind, name, spec)
        return out

    def _check_vm_state(
        self, kind: str, name: str, spec: VMSpec, have_domain: set[tuple[str, str]]
    ) -> list[Finding]:
        subject = f"{kind} {name}"
        if not spec.disk.exists():
            if kind == "project":
                latest = self.reg.latest_generation(name)
                if latest is not None and Path(latest.path).exists():
                    p = self.reg.get_project(name)

                    def rebuild() -> None:
                        self.swarm._finish_seal(p, spec, Path(latest.path), None)
                        self.swarm.provider.define(spec)

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
                    f"remove the {kind} (domain, files, registry row)",
                    lambda: self.swarm.remove_vm(kind, name, spec, None),
                )
            ]
        if (kind, name) not in have_domain:
            if not spec.seed.exists():
                return [
                    Finding(
                        "missing-domain",
                        subject,
                        f"no libvirt VM and no seed {spec.seed}",
                        f"remove the {kind}" if kind == "task" else None,
                        (lambda: self.swarm.remove_vm(kind, name, spec, None))
                        if kind == "task"
                        else None,
                    )
                ]
            return [
                Finding(
                    "missing-domain",
                    subject,
                    "registered with a disk, but libvirt has no VM for it",
                    "define the VM again from the registry",
                    lambda: self.swarm.provider.define(spec),
                )
            ]
        problem = self.swarm.provider.network_problem(spec)
        if problem:
            return [
                Finding(
                    "no-network",
                    subject,
                    problem,
                    "attach a new network process to the running VM",
                    lambda: self.swarm.provider.start(spec),
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
        d = paths.project_dir(project)
        for f in sorted(d.glob("gen-*.qcow2")) if d.is_dir() else []:
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
        home = paths.home()
        now = time.time()
        roots = [home, home / paths.PROJECTS_DIR, home / paths.TASKS_DIR]
        cands: list[Path] = []
        for r in roots:
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
            self.swarm.refresh_ssh_config()
