"""Fast, native disk operations: copy-on-write cloning and disk images.

This is agent-swarm's public, stable API over the compiled core (``agent_swarm._native``).
Every function releases the GIL while it does I/O and is safe to call from several threads.

Errors:
    * :class:`OSError` (with ``errno``, ``filename`` and, for two-path operations,
      ``filename2``) when the operating system refuses something: a missing source, an
      existing destination (``EEXIST``), a directory given as a file (``EISDIR``), no
      permission, no reflink support on this filesystem (``EOPNOTSUPP``/``EXDEV``), a full disk.
    * :class:`InvalidImageError` (a :class:`ValueError`) when a file is readable but is not a
      valid or supported disk image (truncated header, unknown feature bits, a cycle in the
      backing chain, ...).
    * :class:`ValueError` for bad arguments.

No function ever leaves a partially written destination: output goes to a temporary file in
the destination's directory and is renamed into place only when complete.

Example::

    from agent_swarm import native
    native.create_qcow2_overlay("task.qcow2", "/images/template.qcow2")
    native.image_info("task.qcow2").backing_chain[0].path
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, cast

try:
    import agent_swarm._native as _native
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "agent_swarm._native (the compiled core) could not be imported: "
        f"{exc}. Did you install agent-swarm with `pip install .` (which compiles it)? "
        "Running from a source checkout without building does not work."
    ) from exc

__all__ = [
    "CloneMethod",
    "CloneMode",
    "ImageFormat",
    "ImageInfo",
    "InvalidImageError",
    "clone_file",
    "convert_qcow2_to_raw",
    "create_qcow2_overlay",
    "create_vhdx_differencing",
    "detect_format",
    "image_info",
]

StrPath = str | os.PathLike[str]
CloneMode = Literal["auto", "reflink", "copy"]
CloneMethod = Literal["reflink", "copy"]
ImageFormat = Literal["raw", "qcow2", "vhdx"]

InvalidImageError: type[ValueError] = _native.InvalidImageError
InvalidImageError.__module__ = __name__

_FORMATS = ("raw", "qcow2", "vhdx")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What :func:`image_info` reads from an image header (never by running ``qemu-img``).

    Attributes:
        path: the image inspected.
        format: ``"raw"``, ``"qcow2"`` or ``"vhdx"``.
        virtual_size: size of the disk as the guest sees it, in bytes.
        actual_size: bytes actually allocated on the host for this file (not its chain).
        cluster_size: qcow2 cluster size or VHDX block size in bytes; 0 for raw.
        backing_file: the backing (parent) file name as recorded in the image, or ``None``.
        backing_path: ``backing_file`` resolved against the image's directory.
        backing_format: the backing file's format, as recorded or detected.
        backing_chain: :class:`ImageInfo` of every image below this one, nearest first.
        encryption: ``"aes"`` (legacy qcow2 AES) or ``"luks"`` when the qcow2 image is
            encrypted, else ``None``.
        data_file: the external data file name recorded in a qcow2 header extension, or
            ``None``. An image with an external data file keeps only metadata: the guest's
            data is read from (and written to) that file.
        incompatible_features: names of the qcow2 incompatible feature bits that are set, in
            bit order: ``"dirty"`` (lazy refcounts not yet repaired), ``"corrupt"``,
            ``"data_file"`` (an external data file is required, even when ``data_file`` is
            ``None``), ``"compression_type"`` (not zlib), ``"extended_l2"`` (subclusters).
            Unknown bits are not listed: :func:`image_info` raises
            :class:`InvalidImageError` for them. Always ``()`` for raw and VHDX.
    """

    path: str
    format: ImageFormat
    virtual_size: int
    actual_size: int
    cluster_size: int = 0
    backing_file: str | None = None
    backing_path: str | None = None
    backing_format: ImageFormat | None = None
    backing_chain: tuple[ImageInfo, ...] = field(default=(), repr=False)
    encryption: Literal["aes", "luks"] | None = None
    data_file: str | None = None
    incompatible_features: tuple[str, ...] = ()

    @property
    def chain_actual_size(self) -> int:
        """Allocated bytes of this image plus every image below it."""
        return self.actual_size + sum(i.actual_size for i in self.backing_chain)


def _fs(path: StrPath) -> bytes:
    if isinstance(path, bytes):
        raise TypeError("paths must be str or os.PathLike[str], not bytes")
    p = os.fsencode(os.fspath(path))
    if not p:
        raise ValueError("path must not be empty")
    if b"\0" in p:
        raise ValueError(f"path contains a NUL byte: {os.fsdecode(p)!r}")
    return p


def _format(name: str | None, what: str) -> str | None:
    if name is None:
        return None
    if name not in _FORMATS:
        raise ValueError(f"{what} must be one of {', '.join(_FORMATS)}, not {name!r}")
    return name


def clone_file(
    src: StrPath, dst: StrPath, *, mode: CloneMode = "auto", overwrite: bool = False
) -> CloneMethod:
    """Copy ``src`` to ``dst``, sharing its blocks when the filesystem can.

    ``mode="auto"`` reflinks (Linux ``FICLONE`` on XFS/btrfs, macOS ``clonefile``, Windows
    block cloning on ReFS) and otherwise falls back to a copy that keeps holes
    (``SEEK_DATA``/``SEEK_HOLE`` + ``copy_file_range``). ``mode="reflink"`` raises
    :class:`OSError` (``EOPNOTSUPP``, ``EXDEV``) instead of copying; ``mode="copy"`` never
    reflinks. The file mode is preserved.

    Returns the method used: ``"reflink"`` or ``"copy"``.

    Raises:
        FileExistsError: ``dst`` exists and ``overwrite`` is false.
        IsADirectoryError: ``src`` is a directory.
        OSError: any other failure; ``dst`` is left untouched.
    """
    if mode not in ("auto", "reflink", "copy"):
        raise ValueError(f"mode must be 'auto', 'reflink' or 'copy', not {mode!r}")
    return cast(CloneMethod, _native.clone_file(_fs(src), _fs(dst), mode, bool(overwrite)))


def detect_format(path: StrPath) -> ImageFormat:
    """Return ``"qcow2"``, ``"vhdx"`` or ``"raw"`` from the file's magic bytes."""
    return cast(ImageFormat, _native.detect_format(_fs(path)))


def _info(d: dict[str, object], chain: tuple[ImageInfo, ...] = ()) -> ImageInfo:
    return ImageInfo(**d, backing_chain=chain)  # type: ignore[arg-type]


def image_info(path: StrPath, *, chain: bool = True) -> ImageInfo:
    """Inspect a disk image natively (qcow2, raw, VHDX).

    With ``chain=True`` (the default) every backing file is opened too and returned in
    :attr:`ImageInfo.backing_chain`; a missing backing file raises :class:`OSError`.
    """
    if not chain:
        return _info(_native.image_info(_fs(path)))
    raw = _native.image_chain(_fs(path))
    infos: list[ImageInfo] = []
    for d in reversed(raw):
        infos.insert(0, _info(d, tuple(infos)))
    return infos[0]


def create_qcow2_overlay(
    path: StrPath,
    backing: StrPath,
    *,
    backing_format: ImageFormat | None = None,
    size: int | None = None,
) -> None:
    """Write a new qcow2 (v3) image at ``path`` backed by ``backing``.

    ``backing`` is recorded as given; a relative name is resolved against ``path``'s
    directory, as QEMU does. The backing format and the virtual size are read from the
    backing file unless given (``size`` may only grow the disk, and must be a multiple of 512).

    Raises:
        FileExistsError: ``path`` exists.
        FileNotFoundError: ``backing`` does not exist.
        InvalidImageError: ``backing`` is not a valid qcow2/raw image.
        ValueError: bad ``size`` or ``backing_format``.
    """
    fmt = _format(backing_format, "backing_format")
    if fmt == "vhdx":
        raise ValueError("a qcow2 overlay cannot have a VHDX backing file")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"size must be a positive number of bytes, not {size!r}")
        if size % 512:
            raise ValueError(f"size must be a multiple of 512 bytes, not {size}")
    _native.create_qcow2_overlay(_fs(path), _fs(backing), fmt, size)


def convert_qcow2_to_raw(src: StrPath, dst: StrPath) -> None:
    """Write the guest-visible contents of ``src`` (qcow2 with its backing chain, or raw)
    to a new sparse raw file ``dst``: unallocated and zero clusters become holes."""
    _native.convert_qcow2_to_raw(_fs(src), _fs(dst))


def create_vhdx_differencing(path: StrPath, parent: StrPath) -> None:
    """Write an MS-VHDX differencing disk at ``path`` whose parent is the VHDX ``parent``.

    The parent locator records the parent's path relative to ``path`` and its absolute
    path, and links to the parent's DataWriteGuid, as Hyper-V expects.
    """
    _native.create_vhdx_differencing(_fs(path), _fs(parent))
