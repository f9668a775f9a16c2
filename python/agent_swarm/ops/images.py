"""Base images: built locally, registered from a file, or downloaded; and their copies in
each provider's disk format (converted once, on first use, as multipass's
``prepare_source_image``)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from agent_swarm import native
from agent_swarm.errors import AgentSwarmError, AlreadyExists, ImageError, ImageNotFound
from agent_swarm.models import BaseImage
from agent_swarm.names import validate_name

if TYPE_CHECKING:
    from agent_swarm.core import Core

# A base image in one of these formats serves a provider's disks in the key's format as it
# is (a qcow2 overlay may have a raw backing file).
USABLE_AS_IS = {"qcow2": ("qcow2", "raw"), "raw": ("raw",), "vhdx": ("vhdx",)}


class BaseImages:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg

    def build(self, name: str = "debian-12") -> BaseImage:
        from agent_swarm.images import debian

        validate_name(name, "base image name")
        self._name_free(name)
        cached = debian.ensure_cached(self.core.progress)
        return self._import(name, cached, source="build:debian-12")

    def register(self, name: str, image: str) -> BaseImage:
        validate_name(name, "base image name")
        self._name_free(name)
        src = Path(image).expanduser()
        if not src.is_file():
            raise ImageNotFound(f"no image file at {src}", hint="give the path of a .qcow2 or .img")
        return self._import(name, src, source=f"file:{src.absolute()}")

    def download(self, name: str = "ubuntu-24-04", url: str | None = None) -> BaseImage:
        """Download a cloud image (default: Ubuntu 24.04 for this host), verify, register."""
        from agent_swarm.images import debian, download

        validate_name(name, "base image name")
        self._name_free(name)
        cache = debian.cache_dir().parent / "downloads"
        progress = self.core.progress
        if url is None:
            path = download.download_ubuntu(cache, progress)
            source = f"url:{download.ubuntu_image()[0]}"
        else:
            download.check_url(url)  # before anything else: a plain-http URL is refused
            file_name = url.rstrip("/").rsplit("/", 1)[-1] or "image"
            sha = None
            with contextlib.suppress(AgentSwarmError):
                sha = download.sha256sums(url.rsplit("/", 1)[0] + "/SHA256SUMS").get(file_name)
            if sha is None:
                progress(
                    f"notice: no SHA256SUMS with an entry for {file_name} next to the "
                    "image: its integrity is not verified"
                )
            path = download.download(url, cache / file_name, sha256=sha, progress=progress)
            source = f"url:{url}"
        return self._import(name, path, source=source)

    def default(self) -> BaseImage:
        images = self.reg.list_base_images()
        if not images:
            raise ImageNotFound(
                "there is no base image yet",
                hint="create one: `agent-swarm init-base --build debian-12` (local, no "
                "download) or `agent-swarm init-base`",
            )
        return max(images, key=lambda b: b.created_at)

    def source_for(self, base: BaseImage, fmt: str) -> Path:
        """The base image as the parent of a new disk in ``fmt``: the registered file where
        it serves as it is, else a copy converted once (read-only, reused by later VMs)."""
        from agent_swarm import disks
        from agent_swarm.fsutil import file_lock

        if base.format in USABLE_AS_IS.get(fmt, ()):
            return Path(base.path)
        dest = self.core.layout.prepared_base(base.name, fmt)
        if dest.exists():
            return dest
        with file_lock(dest.with_name(f".{dest.name}.lock")):
            if not dest.exists():  # another process may have made it meanwhile
                disks.backend_for(fmt).prepare_source(Path(base.path), dest, self.core.progress)
        return dest

    def _name_free(self, name: str) -> None:
        with contextlib.suppress(ImageNotFound):
            self.reg.get_base_image(name)
            raise AlreadyExists(f"base image {name!r} already exists", hint="choose another --name")

    def _import(self, name: str, src: Path, *, source: str) -> BaseImage:
        from agent_swarm.images.validate import inspect_base_image

        # Untrusted header: data files, backing files, encryption, dirty/corrupt, size.
        info = inspect_base_image(src)  # before anything is copied
        dest = self.core.layout.base_image(name, info.format)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.core.progress(f"copying the image into {dest.parent}")
        native.clone_file(src, dest, overwrite=True)
        os.chmod(dest, 0o444)
        try:
            # The copy is what VMs boot: check it too (src may have changed meanwhile).
            copied = inspect_base_image(dest)
            if (copied.format, copied.virtual_size) != (info.format, info.virtual_size):
                raise ImageError(f"{src} changed while it was copied", hint="run it again")
            return self.reg.add_base_image(
                name,
                path=str(dest),
                format=info.format,
                virtual_size=info.virtual_size,
                source=source,
            )
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
