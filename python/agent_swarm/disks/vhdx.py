"""VHDX disks (Hyper-V): every VM disk and generation is a differencing disk on its parent.

Limitation: a chain of differencing VHDX files is never rewritten. No tool here reads a
differencing VHDX (``qemu-img`` refuses them: "Operation not supported"; the native core
writes them but does not read their blocks), so :meth:`VhdxBackend.detach_parent` raises
:class:`~agent_swarm.errors.ImageError` for a disk that has a parent: a generation that a
newer one depends on is kept.
"""

from __future__ import annotations

from pathlib import Path

from agent_swarm import native
from agent_swarm.disks.base import DiskBackend, Progress, check_grow, qemu_img
from agent_swarm.errors import ImageError


class VhdxBackend(DiskBackend):
    """Dynamic VHDX bases written by ``qemu-img convert``; differencing disks written
    natively (``native.create_vhdx_differencing``, parent locator as Hyper-V expects)."""

    format = "vhdx"
    suffix = ".vhdx"
    detachable = False

    def _write_source(self, src: Path, src_format: str, tmp: Path) -> None:
        """``qemu-img convert -O vhdx -o subformat=dynamic`` (no native VHDX writer of a
        full disk exists); the source format is given with ``-f``, never probed."""
        args = ["convert", "-f", src_format, "-O", "vhdx", "-o", "subformat=dynamic"]
        qemu_img([*args, str(src), str(tmp)], f"cannot convert {src} to vhdx")

    def overlay(self, path: Path, parent: Path, *, size: int | None = None) -> None:
        """``native.create_vhdx_differencing(path, parent)``. A differencing disk has its
        parent's virtual size: any other ``size`` is a ``ValueError``."""
        current = self._virtual_size(parent)
        if check_grow(size, current, parent) != current:
            raise ValueError(
                f"a VHDX differencing disk cannot be grown: {path} keeps the virtual size "
                f"of {parent} ({current} bytes), not {size}"
            )
        native.create_vhdx_differencing(path, parent)

    def detach_parent(
        self, path: Path, new_parent: Path | None, progress: Progress | None = None
    ) -> None:
        """Nothing to do for a standalone disk with ``new_parent=None``; otherwise
        :class:`ImageError`: VHDX chains are not rewritten (see the module docstring)."""
        if new_parent is None and self.parent_of(path) is None:
            return
        raise ImageError(
            f"cannot rewrite the VHDX differencing disk {path}: VHDX chains are not rewritten "
            "(qemu-img does not read differencing VHDX)",
            hint="keep the generation it depends on",
        )

    def untouched(self, path: Path) -> bool:
        """Always ``False`` (conservative): the block allocation table that would show it
        is not read, so the core boots the VM once more before sealing it."""
        return False
