"""The whole life of a project and its tasks, once per disk flavour: qcow2 overlays with
loopback ports, and raw clones with a dynamic (run-time) address reached via ssh-proxy."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from workflow_support import (
    GEN_MODE,
    Swarm,
    assert_consistent,
    assert_qcow2_ok,
    qemu_img,
    qemu_io_write,
    sha256,
)

from fakes.provider import dynamic_port, set_vm_state
from tests_support import agent_swarm_cmd

SETUP_MARKER = "echo workflow-setup-ran"
SETUP_IN_GUEST = "/var/lib/agent-swarm/setup.sh"


def user_data(seed: Path) -> dict[str, object]:
    """The cloud-config a seed ISO carries (JSON after the `#cloud-config` line)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        buf = io.BytesIO()
        iso.get_file_from_iso_fp(buf, rr_path="/user-data")
    finally:
        iso.close()
    head, _, body = buf.getvalue().decode().partition("\n")
    assert head == "#cloud-config"
    data: dict[str, object] = json.loads(body)
    return data


def setup_script_in(seed: Path) -> str | None:
    """The setup script a seed makes the guest run on first boot (None: none)."""
    data = user_data(seed)
    files = {f["path"]: f for f in data.get("write_files", [])}  # type: ignore[union-attr]
    if SETUP_IN_GUEST not in files:
        assert "runcmd" not in data
        return None
    assert any(SETUP_IN_GUEST in " ".join(c) for c in data["runcmd"])  # type: ignore[union-attr]
    return base64.b64decode(files[SETUP_IN_GUEST]["content"]).decode()


def gen_row(swarm: Swarm, project: str, n: int) -> dict[str, object]:
    (row,) = swarm.db(
        "SELECT * FROM generations WHERE project = ? AND generation = ?", (project, n)
    )
    return dict(row)


def backing(path: Path) -> str | None:
    from agent_swarm import native

    return native.image_info(path, chain=False).backing_path


def qcow2_size(path: Path) -> int:
    from agent_swarm import native

    return native.image_info(path, chain=False).virtual_size


def test_full_flow_qcow2(make_swarm, base_image: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("flow")
    s.home.mkdir(mode=0o700)
    (s.home / "setup.sh").write_text(f"#!/bin/bash\nset -e\n{SETUP_MARKER}\n")
    s("init-base", "--image", str(base_image), "--name", "tiny")
    base = s.home / "base-images" / "tiny.qcow2"
    assert base.is_file() and base.stat().st_mode & 0o777 == GEN_MODE

    # -- project create: defined, booted, ready through the fake guest, setup on first boot
    s("project", "create", "p", "--disk", "1G", "--memory", "512M", "--cpus", "1")
    pdir = s.home / "projects" / "p"
    st = s.vm_state("project", "p")
    assert st is not None and st["state"] == "running" and st["boots"] == 1
    assert st["spec"]["disk"] == str(pdir / "disk.qcow2")
    assert backing(pdir / "disk.qcow2") == str(base)
    assert qcow2_size(pdir / "disk.qcow2") == 1 << 30
    assert SETUP_MARKER in (setup_script_in(pdir / "cidata.iso") or "")
    assert [tuple(r) for r in s.db("SELECT provider FROM projects")] == [("fake",)]
    qemu_io_write(pdir / "disk.qcow2", 0x22, "1M")  # what its setup installed

    # -- project stop seals generation 1
    r = s("project", "stop", "p")
    assert "generation 1" in r.stdout
    gen1 = pdir / "gen-1.qcow2"
    assert gen1.is_file() and gen1.stat().st_mode & 0o777 == GEN_MODE
    st = s.vm_state("project", "p")
    assert st["state"] == "stopped" and st["identity_resets"] == 1
    row = gen_row(s, "p", 1)
    assert row["path"] == str(gen1)
    assert (row["format"], row["provider"], row["cpus"], row["memory_mib"], row["disk_gib"]) == (
        "qcow2",
        "fake",
        1,
        512,
        1,
    )
    # The project goes on as a new instance of its template: fresh overlay, no setup again.
    assert backing(pdir / "disk.qcow2") == str(gen1)
    assert setup_script_in(pdir / "cidata.iso") is None

    # -- a task clones generation 1 (and boots, ready)
    s("create", "p", "t1")
    t1_disk = s.home / "tasks" / "t1" / "disk.qcow2"
    assert backing(t1_disk) == str(gen1)
    assert s.vm_state("task", "t1")["state"] == "running"
    assert setup_script_in(s.home / "tasks" / "t1" / "cidata.iso") is None
    (t1_row,) = s.db("SELECT generation, provider FROM tasks WHERE name = 't1'")
    assert tuple(t1_row) == (1, "fake")

    # -- readiness goes through the guest: a guest whose cloud-init failed fails `start`
    set_vm_state(s.home, "project", "p", cloud_init="error")
    r = s("project", "start", "p", check=False)
    assert r.returncode == 1 and "cloud-init did not finish cleanly" in r.stderr
    set_vm_state(s.home, "project", "p", cloud_init="done")
    s("project", "start", "p")
    qemu_io_write(pdir / "disk.qcow2", 0x33, "2M")  # work done in the project since

    # -- generation 2; a new task pins it, the old one stays on generation 1
    r = s("project", "stop", "p")
    assert "generation 2" in r.stdout
    gen2 = pdir / "gen-2.qcow2"
    assert backing(gen2) == str(gen1) and gen2.stat().st_mode & 0o777 == GEN_MODE
    s("create", "p", "t2", "--no-start")
    t2_disk = s.home / "tasks" / "t2" / "disk.qcow2"
    assert backing(t2_disk) == str(gen2)
    assert backing(t1_disk) == str(gen1)
    pins = {r["name"]: r["generation"] for r in s.db("SELECT name, generation FROM tasks")}
    assert pins == {"t1": 1, "t2": 2}

    # -- gc removes nothing pinned (generation 1: t1; generation 2: the newest)
    before = {f.name: sha256(f) for f in s.gen_files("p")}
    assert "Nothing to collect" in s("gc", "--yes").stdout
    assert {f.name: sha256(f) for f in s.gen_files("p")} == before

    # -- once t1 is gone, generation 1 goes, and generation 2 reads the same as before
    snapshot = tmp_path / "gen2.raw"
    r = qemu_img("convert", "-f", "qcow2", "-O", "raw", str(gen2), str(snapshot))
    assert r.returncode == 0, r.stderr
    s("delete", "t1")
    assert "Would remove p generation 1" in s("gc").stdout
    assert gen1.exists()  # a dry run
    r = s("gc", "--yes")
    assert "Removed p generation 1" in r.stdout
    assert not gen1.exists()
    assert [r["generation"] for r in s.db("SELECT generation FROM generations")] == [2]
    assert backing(gen2) == str(base)
    assert gen2.stat().st_mode & 0o777 == GEN_MODE
    for img in (gen2, t2_disk, pdir / "disk.qcow2"):
        r = qemu_img("compare", "-f", "raw", "-F", "qcow2", str(snapshot), str(img))
        assert r.returncode == 0, f"{img}: {r.stdout}{r.stderr}"
    assert "Nothing to collect" in s("gc").stdout
    assert_qcow2_ok(*s.home.rglob("*.qcow2"))
    assert_consistent(s)


# ---- raw clones, dynamic address ----

RAW_CAPS = "disk_format=raw,dynamic_address=1"


def converts(progress: str) -> bool:
    """Did a command's progress say it converted the base image for raw disks?"""
    return "to raw (once)" in progress or "as a raw disk" in progress


def raw_equal(a: Path, b: Path) -> bool:
    return qemu_img("compare", "-q", "-f", "raw", "-F", "raw", str(a), str(b)).returncode == 0


class EchoServer:
    """Echoes one connection's bytes back, then closes (after the client's half-close)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(1)
        self.sock.settimeout(30)
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            while data := conn.recv(65536):
                self.received += data
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def test_raw_disks_and_dynamic_address(make_swarm, base_image: Path) -> None:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("raw", caps=RAW_CAPS)
    s("init-base", "--image", str(base_image), "--name", "tiny")
    r = s("project", "create", "p", "--disk", "1G", "--memory", "512M", "--cpus", "1")
    assert converts(r.stderr)
    prepared = s.home / "base-images" / "tiny.for-raw.img"
    assert prepared.is_file() and prepared.stat().st_mode & 0o777 == GEN_MODE
    # The conversion is byte-equal to the qcow2 base (its 0x11 pattern included).
    r = qemu_img("compare", "-q", "-f", "raw", "-F", "qcow2", str(prepared), str(base_image))
    assert r.returncode == 0
    pdisk = s.home / "projects" / "p" / "disk.img"
    assert pdisk.stat().st_size == 1 << 30
    assert not list((s.home / "projects" / "p").glob("*.qcow2"))
    s("project", "stop", "p")
    gen1 = s.home / "projects" / "p" / "gen-1.img"
    assert gen1.is_file() and gen1.stat().st_mode & 0o777 == GEN_MODE
    assert gen_row(s, "p", 1)["format"] == "raw"

    # A second project reuses the converted base: converted once.
    stamp = prepared.stat()
    r = s("project", "create", "p2", "--disk", "1G", "--memory", "512M", "--no-start")
    assert not converts(r.stderr)
    assert (prepared.stat().st_ino, prepared.stat().st_mtime_ns) == (
        stamp.st_ino,
        stamp.st_mtime_ns,
    )
    assert raw_equal(s.home / "projects" / "p2" / "disk.img", prepared)

    s("create", "p", "t1")
    t1_disk = s.home / "tasks" / "t1" / "disk.img"
    assert raw_equal(t1_disk, gen1) and t1_disk.stat().st_mode & 0o777 == 0o644

    # -- dynamic address: no loopback port, ssh_config goes through ssh-proxy
    assert s.db("SELECT * FROM ports") == []
    cfg = (s.home / "ssh_config").read_text()
    for kind, name in (("task", "t1"), ("project", "p"), ("project", "p2")):
        alias = f"{name}.agent-swarm" if kind == "task" else f"{name}.project.agent-swarm"
        block = cfg.split(f"Host {alias}\n", 1)[1].split("\nHost ", 1)[0]
        (proxy,) = [ln for ln in block.splitlines() if "ProxyCommand" in ln]
        assert proxy.endswith(f"-m agent_swarm ssh-proxy {kind} {name}"), proxy
        assert f"AGENT_SWARM_HOME={s.home}" in proxy
        assert "HostName" not in block and "Port " not in block

    # -- generation 2, gc of generation 1 once unpinned; raw generations have no chain
    s("project", "start", "p")
    s("project", "stop", "p")
    gen2 = s.home / "projects" / "p" / "gen-2.img"
    assert gen2.is_file() and gen_row(s, "p", 2)["format"] == "raw"
    s("create", "p", "t2")
    assert raw_equal(s.home / "tasks" / "t2" / "disk.img", gen2)
    assert "Nothing to collect" in s("gc", "--yes").stdout
    digest = sha256(gen2)
    s("delete", "t1")
    assert "Removed p generation 1" in s("gc", "--yes").stdout
    assert not gen1.exists() and sha256(gen2) == digest
    assert s.home.joinpath("projects", "p", "gen-2.img").stat().st_mode & 0o777 == GEN_MODE
    qcow2 = {p.relative_to(s.home) for p in s.home.rglob("*.qcow2")}
    assert qcow2 == {Path("base-images/tiny.qcow2")}  # the registered base only
    assert_consistent(s, dynamic=True)

    # -- ssh-proxy relays bytes to the address the provider reports now
    port = dynamic_port("task", "t2")
    try:
        server = EchoServer(port)
    except OSError as exc:
        pytest.skip(f"127.0.0.1:{port} (the fake's address of t2) is taken: {exc}")
    try:
        r = subprocess.run(
            [*agent_swarm_cmd(), "ssh-proxy", "task", "t2", "--timeout", "20"],
            input=b"hello\n",
            capture_output=True,
            timeout=60,
            env=s.env(),
        )
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello\n" and server.received == b"hello\n"
    assert s.vm_state("task", "t2")["address_polls"] >= 2  # "no address yet" was retried
    # An unknown VM: a "not found" error (exit 3), not a traceback.
    r = s("ssh-proxy", "task", "missing-vm", check=False)
    assert r.returncode == 3 and "no task named 'missing-vm'" in r.stderr
