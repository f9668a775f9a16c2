"""Where every file of a VM, a template generation and a base image lives.

One object owns the paths (as tart's ``VMDirectory``): callers never join names or bake a disk
format's suffix in. The state directory (``$AGENT_SWARM_HOME``, default ``~/.agent-swarm``)::

    registry.db                           identity and desired state (SQLite)
    base-images/<base>.<qcow2|raw>        registered base images, read-only
    base-images/<base>.for-<fmt><suffix>  a base converted once for a provider's disk format
    projects/<p>/gen-<n><suffix>          sealed template generation n (mode 0444)
    projects/<p>/disk<suffix>             the project's working disk
    tasks/<t>/disk<suffix>                a task's disk, a clone of its generation
    {projects,tasks}/<vm>/cidata.iso      cloud-init NoCloud seed
    {projects,tasks}/<vm>/serial.log      serial console

``<suffix>`` comes from the disk format's backend (``.qcow2``, ``.img``, ``.vhdx``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent_swarm import paths

KINDS = ("project", "task")
SUFFIXES = {"qcow2": ".qcow2", "raw": ".img", "vhdx": ".vhdx"}
FORMAT_OF_SUFFIX = {v: k for k, v in SUFFIXES.items()}


def suffix(fmt: str) -> str:
    from agent_swarm.errors import ImageError

    try:
        return SUFFIXES[fmt]
    except KeyError:
        raise ImageError(
            f"unknown disk format {fmt!r}", hint=f"known formats: {', '.join(SUFFIXES)}"
        ) from None


@dataclass(frozen=True)
class Layout:
    home: Path

    @classmethod
    def default(cls) -> Layout:
        return cls(paths.home())

    # ---- per VM ----
    def root(self, kind: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown VM kind {kind!r}")
        return self.home / (paths.PROJECTS_DIR if kind == "project" else paths.TASKS_DIR)

    def vm_dir(self, kind: str, name: str) -> Path:
        return self.root(kind) / name

    def disk(self, kind: str, name: str, fmt: str) -> Path:
        return self.vm_dir(kind, name) / f"disk{suffix(fmt)}"

    def seed(self, kind: str, name: str) -> Path:
        return self.vm_dir(kind, name) / paths.SEED_ISO

    def serial_log(self, kind: str, name: str) -> Path:
        return self.vm_dir(kind, name) / paths.SERIAL_LOG

    def disks_in(self, kind: str, name: str) -> list[Path]:
        """The VM's working disk in whatever format it has (doctor, gc)."""
        d = self.vm_dir(kind, name)
        return [d / f"disk{s}" for s in SUFFIXES.values() if (d / f"disk{s}").exists()]

    # ---- generations ----
    def generation(self, project: str, n: int, fmt: str) -> Path:
        return self.vm_dir("project", project) / f"gen-{n}{suffix(fmt)}"

    def generation_files(self, project: str) -> list[Path]:
        d = self.vm_dir("project", project)
        if not d.is_dir():
            return []
        return sorted(f for s in SUFFIXES.values() for f in d.glob(f"gen-*{s}"))

    # ---- base images ----
    def base_images(self) -> Path:
        return self.home / paths.BASE_IMAGES_DIR

    def base_image(self, name: str, fmt: str) -> Path:
        """Where a registered base image is copied (its own format: qcow2 or raw)."""
        return self.base_images() / f"{name}.{fmt}"

    def prepared_base(self, name: str, fmt: str) -> Path:
        """A base image converted once for a provider whose disk format differs."""
        return self.base_images() / f"{name}.for-{fmt}{suffix(fmt)}"

    # ---- temporary files doctor may clean up ----
    def temp_roots(self) -> list[Path]:
        return [self.home, self.root("project"), self.root("task"), self.base_images()]
