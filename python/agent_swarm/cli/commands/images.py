from __future__ import annotations

from dataclasses import asdict

import click

from agent_swarm.cli.commands._common import IMAGE
from agent_swarm.cli.context import obj, table


@click.command("init-base")
@click.option(
    "--image", "image", metavar="PATH|URL", help="Register this cloud-style qcow2/raw image."
)
@click.option(
    "--build",
    "build",
    type=click.Choice(["debian-12"]),
    help="Build a cloud-style image locally from distribution packages (no download).",
)
@click.option("--name", type=IMAGE, help="Name of the base image (default: derived from source).")
@click.option("--list", "list_", is_flag=True, help="List registered base images.")
def init_base(image: str | None, build: str | None, name: str | None, list_: bool) -> None:
    """Create or register a base image.

    \b
    Without options: download the Ubuntu 24.04 cloud image for this architecture, verified
    against the published SHA256SUMS.
      --image PATH|URL   register an existing cloud-style image
      --build debian-12  build one from Debian packages (mmdebstrap), offline-friendly
    """
    app = obj()
    if list_:
        images = app.registry.list_base_images()
        app.emit(
            [asdict(i) for i in images],
            table(
                ["NAME", "FORMAT", "SIZE", "SOURCE"],
                [[i.name, i.format, _gib(i.virtual_size), i.source] for i in images],
            )
            if images
            else "No base images yet: create one with `agent-swarm init-base`.",
        )
        return
    if image and build:
        raise click.UsageError("use either --image or --build, not both")
    bases = app.core.images
    if build:
        img = bases.build(name or build)
    elif image and "://" in image:
        img = bases.download(name or _name_from(image.rsplit("/", 1)[-1]), image)
    elif image:
        img = bases.register(name or _name_from(image), image)
    else:
        img = bases.download(name or "ubuntu-24-04")
    app.progress.done()
    app.emit(asdict(img), f"Base image {img.name} ready: {img.path} ({_gib(img.virtual_size)})")


def _name_from(image: str) -> str:
    import re
    from pathlib import Path

    stem = Path(image).name.split(".")[0].lower()
    stem = re.sub(r"[^a-z0-9-]+", "-", stem).strip("-")[:63] or "base"
    return stem if stem[0].isalnum() else f"base-{stem}"[:63]


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"
