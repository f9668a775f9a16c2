"""The :class:`DiskBackend` contract, and what every format shares (sealing, qemu-img).

A backend only writes files: the core picks the names (from :attr:`DiskBackend.suffix`),
holds the locks and records generations in the registry. File modes carry the rule that a
generation is never written again: generations and prepared bases are 0444, VM disks 0644.

Errors: a failing ``qemu-img`` becomes :class:`~agent_swarm.errors.ImageError` with the
first line of its stderr; :class:`OSError` from :mod:`agent_swarm.native` and the file system
propagates (the core turns it into a user error naming the path); bad arguments (a size that
would shrink a disk) are :class:`ValueError`.
"""

from __future__ import annotations

import abc
import errno
import os
import subprocess
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from agent_swarm import native
from agent_swarm.errors import ImageError

Progress = Callable[[str], None]

QEMU_IMG_TIMEOUT = 3600  # seconds; converting or rebasing a large disk takes minutes


def qemu_img(args: Sequence[str], what: str) -> None:
    """Run ``qemu-img ARGS`` (no shell, bounded); any failure becomes ``ImageError(what: …)``."""
    try:
        r = subprocess.run(
            ["qemu-img", *args],
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            timeout=QEMU_IMG_TIMEOUT,
        )
    except FileNotFoundError as exc:
        raise ImageError(
            f"{what}: qemu-img is not installed",
            hint="install it: apt-get install qemu-utils (Debian/Ubuntu), brew install qemu",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what}: qemu-img did not finish in {QEMU_IMG_TIMEOUT} s") from exc
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines()
        raise ImageError(f"{what}: {lines[0] if lines else f'qemu-img exited {r.returncode}'}")


def temp_beside(dest: Path, tag: str) -> Path:
    """A fresh hidden name in ``dest``'s directory (same file system: renames are atomic)."""
    return dest.with_name(f".{dest.name}.{tag}-{uuid.uuid4().hex[:12]}.tmp")


def publish(tmp: Path, dest: Path) -> None:
    """Make the finished ``tmp`` read-only and rename it to ``dest``; on any failure ``tmp``
    is removed (``dest`` is then untouched)."""
    try:
        os.chmod(tmp, 0o444)
        os.rename(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_grow(size: int | None, current: int, parent: Path) -> int:
    """The new disk's virtual size: ``size``, or ``current`` (the parent's) when ``None``.
    ``ValueError`` unless it is a positive multiple of 512 bytes, at least ``current``."""
    if size is None:
        return current
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 512:
        raise ValueError(f"size must be a positive multiple of 512 bytes, not {size!r}")
    if size < current:
        raise ValueError(
            f"size {size} is smaller than the virtual size of {parent} ({current}): "
            "disks are never shrunk"
        )
    return size


class DiskBackend(abc.ABC):
    """How the core builds, seals and rewrites disks of one format.

    Life of a disk: :meth:`prepare_source` turns a registered base image into this format
    once; :meth:`overlay` gives each VM a writable disk showing a parent's content;
    :meth:`seal` turns a project's disk into a read-only generation (:meth:`unseal` undoes
    it); :meth:`detach_parent` lets the core delete a generation another one depends on.
    """

    format: ClassVar[str]
    suffix: ClassVar[str]
    # Whether a disk's parent can be removed after detach_parent (gc). VHDX chains cannot be
    # rewritten here, so gc keeps their older generations.
    detachable: ClassVar[bool] = True

    def prepare_source(self, src: Path, dest: Path, progress: Progress | None = None) -> None:
        """Write ``dest`` (this format, mode 0444) from the registered, validated base image
        ``src`` (qcow2 or raw, told apart by its header), by :meth:`_write_source`. Built
        under a temporary name in ``dest``'s directory, checked (format and virtual size)
        and renamed into place: nothing is left behind on failure. ``dest`` must not exist
        (``FileExistsError``); the caller serializes preparations of one ``dest``."""
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dest))
        try:
            info = native.image_info(src, chain=False)
        except ValueError as exc:  # InvalidImageError; OSError propagates
            raise ImageError(str(exc)) from exc
        tmp = temp_beside(dest, "prepare")
        try:
            if progress:
                progress(f"preparing {src.name} as a {self.format} disk")
            self._write_source(src, info.format, tmp)
            self.check(tmp)
            if (got := self._virtual_size(tmp)) != info.virtual_size:
                raise ImageError(
                    f"preparing {dest} from {src} gave a disk of {got} bytes, "
                    f"not {info.virtual_size}"
                )
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        publish(tmp, dest)

    @abc.abstractmethod
    def _write_source(self, src: Path, src_format: str, tmp: Path) -> None:
        """Write ``src`` (``src_format``: "qcow2" or "raw") in this format at the new ``tmp``."""

    def _virtual_size(self, path: Path) -> int:
        """The guest-visible size of a disk of this format."""
        return native.image_info(path, chain=False).virtual_size

    @abc.abstractmethod
    def overlay(self, path: Path, parent: Path, *, size: int | None = None) -> None:
        """Write a new writable (0644) disk at ``path`` (which must not exist) whose
        guest-visible content is ``parent``'s, grown to ``size`` bytes when given.
        ``ValueError`` when ``size`` would shrink the disk or the format cannot grow it."""

    def seal(self, path: Path, dest: Path) -> None:
        """The VM's disk becomes a read-only generation: rename ``path`` to ``dest``, mode
        0444 (rename first: a VM still holding the file keeps it). Same for every format."""
        os.rename(path, dest)
        try:
            os.chmod(dest, 0o444)
        except BaseException:
            os.rename(dest, path)
            raise

    def unseal(self, dest: Path, path: Path) -> None:
        """Undo :meth:`seal` (a rollback): mode 0644, then rename ``dest`` back to ``path``."""
        os.chmod(dest, 0o644)
        os.rename(dest, path)

    def parent_of(self, path: Path) -> Path | None:
        """The parent (backing) file recorded in the disk's header, resolved against its
        directory; ``None`` for a standalone image. Read natively
        (``native.image_info(chain=False)``): the parent itself is not opened."""
        backing = native.image_info(path, chain=False).backing_path
        return None if backing is None else Path(backing)

    @abc.abstractmethod
    def detach_parent(
        self, path: Path, new_parent: Path | None, progress: Progress | None = None
    ) -> None:
        """Rewrite the read-only generation ``path`` so that its parent becomes
        ``new_parent`` (its current parent's parent; ``None``: standalone) with its
        guest-visible content unchanged, so that the current parent can be deleted. The new
        file is renamed over ``path``: VMs running on the old inode keep it."""

    def actual_size(self, path: Path) -> int | None:
        """Bytes the file occupies on the host (``native.image_info(chain=False)``: its
        allocated blocks, not its chain's); ``None`` when it cannot be read."""
        try:
            return native.image_info(path, chain=False).actual_size
        except (OSError, ValueError):
            return None

    @abc.abstractmethod
    def untouched(self, path: Path) -> bool:
        """True only when the VM disk was provably never written since :meth:`overlay` made
        it (the VM never booted): the core may then seal it without booting it again.
        ``False`` is always safe (the core boots the VM once more before sealing)."""

    def check(self, path: Path) -> None:
        """Raise :class:`ImageError` (one line) unless ``path`` is a readable image of this
        format, judged from its header by ``native.image_info`` (never by ``qemu-img``)."""
        try:
            info = native.image_info(path, chain=False)
        except OSError as exc:
            raise ImageError(f"cannot read the disk {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ImageError(str(exc)) from exc  # "<path>: invalid qcow2 image: …"
        if info.format != self.format:
            raise ImageError(f"{path} is a {info.format} image, not {self.format}")
