"""Is an image safe to register as a base image? Decided from its header alone.

A base image usually comes from somewhere else (a download, a colleague, a build farm), so
its header is untrusted input: it is read by :func:`agent_swarm.native.image_info` (our own
parser, never ``qemu-img``) and must pass :func:`check_base_image` before a byte is copied.
Refused, each with one error and a hint:

* an external data file (qcow2 ``data_file``): the VM would read and write *that host
  file* as its disk;
* a backing file: the same, through the backing chain;
* encryption (legacy AES or LUKS): there is no key to give QEMU, so it can only fail at boot;
* the ``corrupt`` or ``dirty`` bit: QEMU refuses or must repair it, but base images are
  read-only backing files for every project;
* incompatible feature bits this parser does not know (refused by the parser itself);
* a virtual size over :data:`MAX_VIRTUAL_SIZE`, or of zero.

Extended L2 entries (subclusters) and zstd compression are accepted: QEMU >= 5.2 reads
them, and they change nothing about what the guest can reach.
"""

from __future__ import annotations

from pathlib import Path

from agent_swarm import native
from agent_swarm.errors import ImageError

MAX_VIRTUAL_SIZE = 16 << 40  # 16 TiB

_CONVERT = "qemu-img convert -O qcow2 SRC DST"


def _tib(n: int) -> str:
    return f"{n / (1 << 40):.1f} TiB"


def check_base_image(info: native.ImageInfo) -> None:
    """Raise :class:`ImageError` (with a hint) unless ``info`` describes an image a VM may
    safely boot from as a base image: self-contained (no backing or external data file),
    unencrypted, clean, and of a sane size. ``info`` should come from
    ``native.image_info(path, chain=False)``: a backing file must not even be opened."""
    src = info.path
    if info.format not in ("qcow2", "raw"):
        raise ImageError(
            f"{src} is a {info.format} image; base images must be qcow2 or raw",
            hint=f"convert it: {_CONVERT}",
        )
    if info.data_file is not None or "data_file" in info.incompatible_features:
        named = f" ({info.data_file!r})" if info.data_file is not None else ""
        raise ImageError(
            f"{src} uses an external data file{named}: a VM would use that host file as its disk",
            hint=f"make a self-contained copy: {_CONVERT}",
        )
    if info.backing_file is not None:
        raise ImageError(
            f"{src} has a backing file ({info.backing_file!r})",
            hint=f"flatten it first: {_CONVERT}",
        )
    if info.encryption is not None:
        kind = "LUKS" if info.encryption == "luks" else "AES"
        raise ImageError(
            f"{src} is {kind}-encrypted; base images must not be encrypted",
            hint="decrypt it: qemu-img convert --object secret,id=k,file=KEYFILE --image-opts "
            "-O qcow2 driver=qcow2,file.filename=SRC,encrypt.key-secret=k DST",
        )
    if "corrupt" in info.incompatible_features:
        raise ImageError(
            f"{src} is marked corrupt in its qcow2 header",
            hint="repair a copy: qemu-img check -r all COPY (or get a fresh image)",
        )
    if "dirty" in info.incompatible_features:
        raise ImageError(
            f"{src} is dirty (not closed cleanly with lazy refcounts) and needs a repair",
            hint="repair it: qemu-img check -r all SRC",
        )
    if info.virtual_size > MAX_VIRTUAL_SIZE:
        raise ImageError(
            f"{src} has a virtual size of {_tib(info.virtual_size)}; base images may have "
            f"at most {_tib(MAX_VIRTUAL_SIZE)}",
            hint="use an image with a smaller virtual disk (at most 16 TiB), or shrink this "
            "one: qemu-img resize --shrink SRC SIZE",
        )
    if info.virtual_size == 0:
        raise ImageError(f"{src} has a virtual size of 0 bytes", hint="use a real disk image")


def inspect_base_image(path: Path) -> native.ImageInfo:
    """Read ``path``'s header (never its backing files) and :func:`check_base_image` it."""
    try:
        info = native.image_info(path, chain=False)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        # The native message starts with the path itself: do not repeat it.
        why = str(exc).removeprefix(f"{path}: ")
        hint = "base images must be qcow2 or raw"
        if "feature bits" in why:
            hint = f"convert it with a QEMU that knows the feature: {_CONVERT}"
        raise ImageError(f"{path} is not a usable disk image: {why}", hint=hint) from exc
    check_base_image(info)
    return info
