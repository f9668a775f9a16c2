"""Raw disks (macOS Virtualization.framework): every VM disk is a full clone of its parent,
cheap where the file system shares blocks (APFS ``clonefile``, Linux reflinks on XFS/btrfs).

A raw file has no header: every byte is the guest's. So this backend never asks
``native.image_info`` what a raw disk *is* (a guest may have written a qcow2 magic to its
first sector): sizes come from ``os.stat``, and a raw disk has no parent.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent_swarm import native
from agent_swarm.disks.base import DiskBackend, Progress, check_grow
from agent_swarm.errors import ImageError


class RawBackend(DiskBackend):
    """Full clones (``native.clone_file``: a reflink, else a sparse copy); no chains."""

    format = "raw"
    suffix = ".img"

    def _write_source(self, src: Path, src_format: str, tmp: Path) -> None:
        """``native.clone_file`` for a raw base; ``native.convert_qcow2_to_raw`` (sparse,
        byte-equal to ``qemu-img convert -O raw``) for a qcow2 one."""
        if src_format == "raw":
            native.clone_file(src, tmp)
        else:
            native.convert_qcow2_to_raw(src, tmp)

    def _virtual_size(self, path: Path) -> int:
        return os.stat(path).st_size

    def overlay(self, path: Path, parent: Path, *, size: int | None = None) -> None:
        """``native.clone_file(parent, path)`` (refuses an existing ``path``), mode 0644
        (the parent is 0444), then ``os.truncate`` to ``size``: the new tail is a hole, read
        as zeros."""
        new_size = check_grow(size, self._virtual_size(parent), parent)
        native.clone_file(parent, path)
        try:
            os.chmod(path, 0o644)
            if new_size != os.stat(path).st_size:
                os.truncate(path, new_size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def parent_of(self, path: Path) -> Path | None:
        """Always ``None``: a raw disk is a full clone (and its bytes are the guest's)."""
        return None

    def detach_parent(
        self, path: Path, new_parent: Path | None, progress: Progress | None = None
    ) -> None:
        """Nothing to do: a raw generation never depends on another file."""

    def actual_size(self, path: Path) -> int | None:
        """Allocated blocks from ``os.stat`` (shared reflinked blocks count in full, as
        ``du`` counts them); through ``native.image_info`` where ``st_blocks`` is missing."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        blocks = getattr(st, "st_blocks", None)
        return blocks * 512 if blocks is not None else super().actual_size(path)

    def untouched(self, path: Path) -> bool:
        """Always ``False``: a clone cannot show it was never written without remembering
        what it was cloned from (its extents could be compared, but not portably), so the
        core boots the VM once more before sealing it: slower, never wrong."""
        return False

    def check(self, path: Path) -> None:
        """A readable regular file of a non-zero size that is a multiple of 512 bytes (its
        content is not looked at: any bytes are a valid raw disk)."""
        try:
            st = os.stat(path)
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ImageError(f"cannot read the disk {path}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or st.st_size % 512:
            raise ImageError(
                f"{path} is not a raw disk (a regular file of a non-zero multiple of 512 bytes)"
            )
