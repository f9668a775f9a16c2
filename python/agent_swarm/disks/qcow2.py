"""qcow2 disks (libvirt/QEMU): every VM disk and generation is a thin overlay on its parent."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from agent_swarm import native
from agent_swarm.disks.base import DiskBackend, Progress, check_grow, qemu_img

_MAX_L1_ENTRIES = 1 << 22  # 32 MiB of L1 table: far beyond any disk agent-swarm accepts


class Qcow2Backend(DiskBackend):
    """Overlays written natively (``native.create_qcow2_overlay``, no qemu-img needed to
    create a VM); only rewriting a chain (:meth:`detach_parent`) and converting a raw base
    run ``qemu-img``."""

    format = "qcow2"
    suffix = ".qcow2"

    def _write_source(self, src: Path, src_format: str, tmp: Path) -> None:
        """A qcow2 base is cloned (``native.clone_file``: a reflink where the file system
        can); a raw base is converted (``qemu-img convert -O qcow2``), so that every file of
        a chain is qcow2 and no raw file's content (the guest's bytes) is ever probed for a
        format."""
        if src_format == "qcow2":
            native.clone_file(src, tmp)
        else:
            args = ["convert", "-f", src_format, "-O", "qcow2", str(src), str(tmp)]
            qemu_img(args, f"cannot convert {src} to qcow2")

    def overlay(self, path: Path, parent: Path, *, size: int | None = None) -> None:
        """``native.create_qcow2_overlay`` (backing format read from the parent's header).
        The overlay records ``parent`` as given: a relative name resolves against
        ``path``'s directory."""
        if size is not None:
            check_grow(size, self._virtual_size(parent), parent)
        native.create_qcow2_overlay(path, parent, size=size)

    def detach_parent(
        self, path: Path, new_parent: Path | None, progress: Progress | None = None
    ) -> None:
        """``qemu-img rebase`` (safe mode: it copies into the file every cluster whose
        content differs between the old and the new parent) on a clone of ``path`` named
        ``.<name>.detach.tmp`` in its directory, then ``os.replace`` over ``path``.
        ``new_parent=None`` makes it standalone; a relative ``new_parent`` is recorded as an
        absolute path. The new parent's format goes with ``-F`` (qemu-img 7.2 refuses a
        rebase without it): as recorded in the current parent's header when ``new_parent``
        is that parent's backing file, else read from ``new_parent``'s own header."""
        if progress:
            progress(f"rewriting {path.name} off its parent")
        cmd = ["rebase", "-f", "qcow2", "-b", ""]
        if new_parent is not None:
            # qemu-img resolves a relative -b against the image's directory, not ours.
            cmd[-1] = os.path.abspath(new_parent)
            cmd += ["-F", self._format_of(new_parent, below=self.parent_of(path))]
        tmp = path.with_name(f".{path.name}.detach.tmp")
        tmp.unlink(missing_ok=True)  # left by a crash: never anything else's
        try:
            native.clone_file(path, tmp)
            os.chmod(tmp, 0o644)
            onto = f"onto {new_parent}" if new_parent else "as a standalone image"
            qemu_img([*cmd, str(tmp)], f"cannot rewrite {path} {onto}")
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @staticmethod
    def _format_of(new_parent: Path, below: Path | None) -> str:
        if below is not None:
            info = native.image_info(below, chain=False)
            if (
                info.backing_path is not None
                and info.backing_format is not None
                and os.path.realpath(info.backing_path) == os.path.realpath(new_parent)
            ):
                return info.backing_format
        return native.image_info(new_parent, chain=False).format

    def untouched(self, path: Path) -> bool:
        """Today's rule first: the file holds no more than a fresh overlay's four clusters
        (header, refcount table and block, L1 table), read natively (``native.image_info``).
        That alone misses a small write (a fresh overlay is sparse: a 4 KiB guest write
        leaves it under four clusters), so also every L1 entry must still be zero: a guest
        write that changes what the disk shows, zeros included, allocates an L2 table. The
        header and L1 table are QEMU's, never the guest's."""
        info = native.image_info(path, chain=False)
        if info.actual_size > info.cluster_size * 4:
            return False
        with open(path, "rb") as f:
            l1_entries, l1_offset = struct.unpack(">IQ", f.read(48)[36:48])
            if l1_entries > _MAX_L1_ENTRIES:
                return False
            f.seek(l1_offset)
            l1 = f.read(l1_entries * 8)
        return l1 == bytes(l1_entries * 8)
