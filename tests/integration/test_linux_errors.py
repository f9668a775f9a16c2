"""Bad input against the real Linux provider: a clear error, a non-zero exit code, no
traceback, and nothing half-created (no domain, no disk, no registry row)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests_support import Swarm, domains_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def rows(home: Path, table: str) -> int:
    con = sqlite3.connect(home / "registry.db")
    try:
        return int(con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        con.close()


def assert_clean_error(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "\nError: " in "\n" + r.stderr, r.stderr  # after any progress lines
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def register_cached_base(home: Path) -> None:
    """Register the cached Debian image directly (no copy): these tests never boot it."""
    from agent_swarm import native
    from agent_swarm.images import debian
    from agent_swarm.registry import Registry

    img = debian.cached_image_path()
    if not img.exists():
        pytest.skip(f"the cached Debian image {img} is built by test_linux_e2e first")
    home.mkdir(parents=True, exist_ok=True)
    with Registry(home / "registry.db") as reg:
        reg.add_base_image(
            "deb",
            path=str(img),
            format="qcow2",
            virtual_size=native.image_info(img).virtual_size,
            source="build:debian-12",
        )


def test_unknown_things_and_order_of_operations(swarm: Swarm) -> None:
    home = swarm.home
    r = swarm("project", "create", "p1", check=False)
    assert_clean_error(r, 3, "no base image", "init-base")
    register_cached_base(home)
    assert_clean_error(
        swarm("project", "create", "p1", "--base", "nope", check=False),
        3,
        "no base image named 'nope'",
    )
    assert_clean_error(swarm("create", "nope", "t1", check=False), 3, "no project named 'nope'")
    assert_clean_error(swarm("delete", "nope", check=False), 3, "no task named 'nope'")
    assert_clean_error(
        swarm("project", "create", "p1", "--disk", "1G", check=False),
        2,
        "smaller than the base image",
    )
    assert rows(home, "projects") == 0 and domains_of(home) == []

    # A project that was never sealed cannot have tasks yet.
    swarm("project", "create", "p1", "--no-wait", "--memory", "512M")
    try:
        r = swarm("create", "p1", "t1", check=False)
        assert_clean_error(r, 1, "has no template yet", "project stop p1")
        assert rows(home, "tasks") == 0
        assert not (home / "tasks" / "t1").exists()
        assert [d for d in domains_of(home) if "-task-" in d] == []
        # Duplicate names: refused, the first one untouched.
        r = swarm("project", "create", "p1", "--no-wait", check=False)
        assert_clean_error(r, 1, "already exists")
        assert rows(home, "projects") == 1 and len(domains_of(home)) == 1
        assert (home / "projects/p1/disk.qcow2").exists()
    finally:
        swarm("project", "delete", "p1")
    assert rows(home, "projects") == 0 and rows(home, "ports") == 0
    assert domains_of(home) == [] and not (home / "projects/p1").exists()


def test_libvirtd_unreachable(swarm: Swarm) -> None:
    r = swarm(
        "project",
        "create",
        "p2",
        check=False,
        env={"AGENT_SWARM_LIBVIRT_URI": "qemu+unix:///system?socket=/nonexistent.sock"},
    )
    assert_clean_error(r, 4, "cannot connect to libvirt", "libvirtd")


def test_no_qemu_on_path(swarm: Swarm) -> None:
    import sys

    r = swarm(
        "project", "create", "p3", check=False, env={"PATH": str(Path(sys.executable).parent)}
    )
    # The qemu check's own message and hint (providers/libvirt/probe.py), not just any error
    # that names qemu (every libvirt error names its URI, qemu:///system).
    assert_clean_error(
        r,
        4,
        "Error: the libvirt provider cannot run on this host: "
        "no qemu-system binary for this architecture on PATH\n",
        "Hint: apt install qemu-system-x86 (or qemu-system-arm on arm64)\n",
    )
    assert "qemu:///" not in r.stderr


@pytest.fixture
def tiny_home(tmp_path: Path) -> Iterator[Path]:
    """A state directory on a 4 MiB tmpfs (root only)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt / "home"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_during_create_leaves_nothing(swarm: Swarm, tiny_home: Path) -> None:
    s = Swarm(tiny_home)
    register_cached_base(tiny_home)
    s("list")  # registry created, then fill the filesystem to the last byte
    filler = tiny_home.parent / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            buf = b"\0" * size
            while True:
                try:
                    os.write(fd, buf)
                except OSError:
                    break
    finally:
        os.close(fd)
    r = s("project", "create", "full", check=False)
    assert r.returncode not in (0, 70), r.stderr
    assert "\nError: " in "\n" + r.stderr and "Traceback" not in r.stderr
    assert "space" in r.stderr.lower() or "full" in r.stderr.lower(), r.stderr
    os.unlink(filler)
    assert rows(tiny_home, "projects") == 0 and rows(tiny_home, "ports") == 0
    assert not (tiny_home / "projects" / "full").exists()
    assert domains_of(tiny_home) == []
