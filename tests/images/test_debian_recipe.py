"""Pure parts of the Debian image builder (the full build is exercised by the e2e test)."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from agent_swarm.images import debian


def test_host_sources_one_line_and_deb822(tmp_path: Path) -> None:
    apt = tmp_path / "etc/apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text(
        "# comment\ndeb http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\n"
        "deb [arch=amd64] http://other.example/x stable main\n"
    )
    (apt / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://m2.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://m2.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://disabled.example\nSuites: bookworm\nEnabled: no\n"
    )
    (apt / "sources.list.d/node.sources.disabled").write_text(
        "Types: deb\nURIs: http://n.example\nSuites: bookworm\n"
    )
    assert debian.host_debian_sources(tmp_path) == [
        "deb http://mirror.example/debian bookworm main",
        "deb http://m2.example/debian bookworm main",
        "deb http://m2.example/debian bookworm-updates main",
        "deb http://m2.example/debian-security bookworm-security main",
    ]


@pytest.mark.skipif(
    not Path("/usr/lib/grub/i386-pc/boot.img").exists(),
    reason="needs grub-pc-bin (apt install grub-pc-bin)",
)
def test_mbr_layout() -> None:
    m = debian.mbr(0x12345678)
    assert len(m) == 512 and m[510:] == b"\x55\xaa"
    assert m[0x66:0x68] == b"\x90\x90"  # boot drive check disabled, as grub-bios-setup does
    assert struct.unpack_from("<Q", m, 0x5C)[0] == 1  # core.img at sector 1
    assert struct.unpack_from("<I", m, 0x1B8)[0] == 0x12345678
    p1 = struct.unpack_from("<B3sB3sII", m, 0x1BE)
    p2 = struct.unpack_from("<B3sB3sII", m, 0x1CE)
    assert (p1[2], p1[4] * 512, p1[5] * 512) == (0xEF, debian.ESP_START, debian.ESP_SIZE)
    assert (p2[0], p2[2], p2[4] * 512) == (0x80, 0x83, debian.ROOT_START)
    assert (p2[4] + p2[5]) * 512 == debian.DISK_SIZE


def test_embed_core_patches_the_blocklist() -> None:
    core = bytearray(512 * 3 + 100)
    struct.pack_into("<QHH", core, 0x1F4, 2, 0, 0x820)
    out = debian.embed_core(bytes(core))
    assert len(out) == 512 * 4
    assert struct.unpack_from("<QHH", out, 0x1F4) == (2, 3, 0x820)
    with pytest.raises(Exception, match="unexpected GRUB"):
        debian.embed_core(bytes(1024))


# Everything recipe_hash() covers; each must change the hash (and so the cached image's name).
RECIPE_INPUTS = [
    "RECIPE_VERSION",
    "SUITE",
    "PACKAGES",
    "CLOUD_CFG",
    "NETWORKD",
    "SSHD",
    "FSTAB",
    "GRUB_CFG",
    "GRUB_EARLY",
    "GRUB_PC_MODULES",
    "GRUB_EFI_MODULES",
    "DISK_SIZE",
    "ESP_SIZE",
]


def _changed(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | str | list):
        raise TypeError(f"no way to change a {type(value).__name__} here")
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "# changed\n"
    return [*value, "changed"]


@pytest.mark.parametrize("name", RECIPE_INPUTS)
def test_recipe_hash_changes_with_each_input(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = debian.recipe_hash()
    assert re.fullmatch("[0-9a-f]{16}", before), before
    monkeypatch.setattr(debian, name, _changed(getattr(debian, name)))
    after = debian.recipe_hash()
    assert after != before, f"changing {name} does not change the recipe hash"
    assert debian.cached_image_path().name == f"debian-12-amd64-{after}.qcow2"


def test_recipe_hash_is_the_same_in_every_process() -> None:
    """The cache name must not depend on the process (hash seed, set/dict order, ids)."""
    code = "from agent_swarm.images import debian; print(debian.recipe_hash())"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        for seed in ("0", "1", "12345")
    }
    assert seen == {debian.recipe_hash()}
