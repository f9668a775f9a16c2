"""Build cloud-init NoCloud seed images.

The seed is an ISO 9660 image with the volume label ``cidata`` holding ``meta-data``,
``user-data`` and optionally ``network-config`` (Rock Ridge + Joliet names). It is attached
to the VM as a read-only *virtio disk*, not a CD-ROM: Debian's cloud kernel has no AHCI
CD-ROM driver, and cloud-init finds the seed by its label on any block device.

``user-data`` is written as ``#cloud-config`` followed by JSON, which is valid YAML: no YAML
library, and no quoting mistakes with keys or scripts.

The seed may contain a VM's SSH host private key, so it is written 0600, atomically.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pycdlib

from agent_swarm.fsutil import atomic_write


def cloud_config(data: dict[str, Any]) -> str:
    return "#cloud-config\n" + json.dumps(data, indent=1, sort_keys=True) + "\n"


def _iso_name(name: str) -> str:
    base = "".join(c for c in name.upper() if c.isalnum())[:8]
    return f"/{base}.;1"


def build_seed_iso(
    path: str | os.PathLike[str],
    *,
    instance_id: str,
    hostname: str,
    user_data: str,
    network_config: str | None = None,
) -> None:
    """Write a NoCloud seed to ``path`` (temp file + rename, mode 0600)."""
    meta = json.dumps({"instance-id": instance_id, "local-hostname": hostname}) + "\n"
    files = [("meta-data", meta), ("user-data", user_data)]
    if network_config is not None:
        files.append(("network-config", network_config))
    dest = Path(path)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    try:
        for name, text in files:
            data = text.encode()
            iso.add_fp(
                io.BytesIO(data), len(data), _iso_name(name), rr_name=name, joliet_path=f"/{name}"
            )
        atomic_write(dest, iso.write_fp, mode=0o600)
    finally:
        iso.close()
