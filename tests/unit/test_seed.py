from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest

from agent_swarm.cloudinit import build_seed_iso, cloud_config


def _read(iso_path: Path, name: str) -> str:
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        buf = io.BytesIO()
        iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
        return buf.getvalue().decode()
    finally:
        iso.close()


def test_seed_is_a_cidata_iso_with_nocloud_files(tmp_path: Path) -> None:
    ud = cloud_config({"users": [{"name": "worker"}], "runcmd": [["echo", "a'b\"c"]]})
    seed = tmp_path / "cidata.iso"
    build_seed_iso(seed, instance_id="t-1", hostname="fix-login", user_data=ud)
    assert (seed.stat().st_mode & 0o777) == 0o600
    assert os.listdir(tmp_path) == ["cidata.iso"]
    meta = json.loads(_read(seed, "meta-data"))
    assert meta == {"instance-id": "t-1", "local-hostname": "fix-login"}
    user = _read(seed, "user-data")
    assert user.startswith("#cloud-config\n")
    assert json.loads(user.split("\n", 1)[1])["runcmd"] == [["echo", "a'b\"c"]]
    if shutil.which("blkid"):  # independent reader of the volume label cloud-init looks for
        out = subprocess.run(
            ["blkid", "-p", "-o", "export", str(seed)], capture_output=True, text=True
        ).stdout
        assert "LABEL=cidata" in out and "TYPE=iso9660" in out


def test_seed_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_seed_iso(
            tmp_path / "missing-dir" / "x.iso",
            instance_id="i",
            hostname="h",
            user_data="#cloud-config\n{}",
        )
    assert os.listdir(tmp_path) == []
