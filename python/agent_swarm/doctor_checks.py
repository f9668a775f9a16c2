"""The checks `doctor` runs on each registered VM, its generations, temp files and the SSH
config (with the re-checks `--fix` runs while holding a VM's journal slot)."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_swarm.errors import AgentSwarmError
from agent_swarm.models import Generation, VMSpec

if TYPE_CHECKING:
    from agent_swarm.core import Core
    from agent_swarm.layout import Layout
    from agent_swarm.providers.base import Provider, VMStatus
    from agent_swarm.registry import Registry

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


class Checks:
    core: Core
    reg: Registry
    layout: Layout

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
        out += self._check_warm(project, gens)
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

    def _check_warm(self, project: str, gens: list[Generation]) -> list[Finding]:
        """Warm templates: recorded ones intact (full checksums: a root QEMU started with
        share=on by mistake would write into the RAM file), unrecorded directories removed."""
        out = []
        warm = self.core.warm
        recorded = set()
        for g in gens:
            if not g.memory_image:
                continue
            recorded.add(g.memory_image)
            t = warm.template(g)
            problems = ["its files are gone"] if t is None else warm.problems(t)
            if problems:
                users = [
                    x.name for x in self.reg.list_tasks(project) if x.warm_from == g.memory_image
                ]
                out.append(
                    Finding(
                        "damaged-warm-template",
                        f"project {project} generation {g.generation}",
                        "warm template: "
                        + "; ".join(problems)
                        + (f" (tasks resumed from it: {', '.join(users)})" if users else ""),
                        None
                        if users
                        else "remove it (tasks then boot cold; `project warm` saves a new one)",
                        None if users else partial(_drop, warm, project, g.generation),
                        vm=("project", project),
                    )
                )
        d = self.layout.vm_dir("project", project)
        for w in sorted(d.glob("gen-*.warm*")) if d.is_dir() else []:
            if str(w) in recorded:
                continue
            out.append(
                Finding(
                    "orphan-files",
                    str(w),
                    "an unfinished or unrecorded warm template",
                    "remove it",
                    partial(shutil.rmtree, w, ignore_errors=True),
                    vm=("project", project),
                    recheck=partial(
                        lambda p, x: all(g.memory_image != x for g in self.reg.list_generations(p)),
                        project,
                        str(w),
                    ),
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


def _drop(warm: Any, project: str, generation: int) -> None:
    warm.drop(project, generation)
