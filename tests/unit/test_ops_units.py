"""Journal, capacity, bulk runner and gc, without VMs (gc on real qcow2 chains)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent_swarm import capacity
from agent_swarm.bulk import LiveLines, run_parallel
from agent_swarm.errors import Busy, CapacityError, ConfigError, InvalidState
from agent_swarm.registry import Registry

GIB = 1 << 30


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry(tmp_path / "registry.db")
    yield r
    r.close()


# ---- journal --------------------------------------------------------------------------------
def test_journal_is_a_per_vm_lock_that_cannot_go_stale(reg: Registry) -> None:
    e = reg.journal_begin("create", "task", "t1")
    with pytest.raises(Busy, match="busy: create in progress"):
        reg.journal_begin("delete", "task", "t1")
    # Other VMs are independent: a task of another name, a project of the same name.
    e2 = reg.journal_begin("create", "task", "t2")
    e3 = reg.journal_begin("create", "project", "t1")
    assert len({e, e2, e3}) == 3 and all(isinstance(i, int) and i > 0 for i in (e, e2, e3))
    assert sorted((j.kind, j.name) for j in reg.journal()) == [
        ("project", "t1"),
        ("task", "t1"),
        ("task", "t2"),
    ]
    reg.journal_step(e, "disk", "detail")
    (entry,) = [j for j in reg.journal() if (j.kind, j.name) == ("task", "t1")]
    assert (entry.op, entry.step, entry.detail, entry.pid) == (
        "create",
        "disk",
        "detail",
        os.getpid(),
    )
    reg.journal_end(e)
    reg.journal_end(reg.journal_begin("delete", "task", "t1"))


def test_a_dead_owner_makes_the_entry_stale_not_blocking(reg: Registry, tmp_path: Path) -> None:
    code = (
        "import sys; from agent_swarm.registry import Registry; "
        f"Registry({str(tmp_path / 'registry.db')!r}).journal_begin('seal', 'project', 'p')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with pytest.raises(Busy, match="was interrupted") as ei:
        reg.journal_begin("delete", "project", "p")
    assert "doctor --fix" in (ei.value.hint or "")


def test_a_reused_pid_is_not_the_owner(reg: Registry) -> None:
    from agent_swarm import procs

    pid, token = procs.me()
    assert procs.alive(pid, token)
    assert not procs.alive(pid, token + "0")  # same PID, other start time
    assert not procs.alive(0, token)


# ---- capacity ------------------------------------------------------------------------------
HOST = capacity.Host(
    cpus=2,
    memory_bytes=24 * GIB,
    memory_available_bytes=20 * GIB,
    disk_total_bytes=100 * GIB,
    disk_free_bytes=50 * GIB,
)


def test_capacity_fits_and_refuses_with_the_numbers() -> None:
    lim = capacity.Limits(cpu_ratio=4, memory_ratio=1, disk_reserve_gib=2)
    capacity.check(HOST, capacity.Demand(4, 8192, 4), capacity.Demand(4, 8192, 4), lim, what="x")
    with pytest.raises(CapacityError) as ei:
        capacity.check(
            HOST,
            capacity.Demand(6, 20480, 6),
            capacity.Demand(4, 4096, 2),
            lim,
            what="creating 2 task VMs",
        )
    msg = ei.value.message
    assert msg.startswith("creating 2 task VMs would oversubscribe this host on top of 6 running")
    assert "10 vCPUs > 8 (2 CPUs x cpu_ratio 4)" in msg
    assert "24.0 GiB RAM > 23.0 GiB" in msg
    assert "--force" in (ei.value.hint or "")
    tiny_disk = capacity.Host(2, 24 * GIB, 20 * GIB, 100 * GIB, GIB)
    with pytest.raises(CapacityError, match="free disk"):
        capacity.check(tiny_disk, capacity.Demand(), capacity.Demand(1, 512, 1), lim, what="x")


def test_capacity_ratios_from_config_and_env(
    swarm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert capacity.limits() == capacity.Limits()
    swarm_home.mkdir(parents=True, exist_ok=True)
    (swarm_home / "config.toml").write_text("[capacity]\ncpu_ratio = 8\nmemory_ratio = 1.5\n")
    assert capacity.limits() == capacity.Limits(8.0, 1.5, 2.0)
    monkeypatch.setenv("AGENT_SWARM_MEMORY_RATIO", "0.5")
    assert capacity.limits().memory_ratio == 0.5
    monkeypatch.setenv("AGENT_SWARM_MEMORY_RATIO", "lots")
    with pytest.raises(ConfigError, match="memory_ratio must be a number"):
        capacity.limits()
    monkeypatch.setenv("AGENT_SWARM_MEMORY_RATIO", "-1")
    with pytest.raises(ConfigError, match="must be > 0"):
        capacity.limits()
    monkeypatch.delenv("AGENT_SWARM_MEMORY_RATIO")
    (swarm_home / "config.toml").write_text("[capacity\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        capacity.limits()


def test_default_parallelism() -> None:
    vm = capacity.Demand(2, 2048, 1)
    assert capacity.default_parallel(HOST, 1, vm, booting=True) == 1
    assert capacity.default_parallel(HOST, 20, vm, booting=False) == 8
    assert capacity.default_parallel(HOST, 20, vm, booting=True) == 4  # 2 x 2 CPUs
    low_ram = capacity.Host(16, 24 * GIB, 5 * GIB, 100 * GIB, 50 * GIB)
    assert capacity.default_parallel(low_ram, 20, vm, booting=True) == 2  # 5 GiB / 2 GiB


def test_host_reads_this_machine(tmp_path: Path) -> None:
    h = capacity.host(tmp_path)
    assert h.cpus >= 1 and h.memory_bytes > GIB and 0 < h.memory_available_bytes <= h.memory_bytes
    assert h.disk_free_bytes <= h.disk_total_bytes


# ---- bulk runner ---------------------------------------------------------------------------
def test_bulk_runs_bounded_keeps_order_and_isolates_failures(tmp_path: Path) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def work(name: str, progress) -> str:  # type: ignore[no-untyped-def]
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            progress("working")
            time.sleep(0.05)
            if name == "bad":
                raise InvalidState("it cannot be done", hint="do something else")
            if name == "bug":
                raise RuntimeError("oops")
            return f"made {name}"
        finally:
            with lock:
                active -= 1

    names = ["a", "bad", "b", "bug", "c", "d"]
    log = (tmp_path / "log").open("w+")
    results = run_parallel(names, work, parallel=2, live=LiveLines(names, stream=log))
    assert [r.name for r in results] == names
    assert [r.ok for r in results] == [True, False, True, False, True, True]
    assert results[1].detail == "it cannot be done" and results[1].hint == "do something else"
    assert results[3].detail.startswith("internal error: RuntimeError")
    assert peak == 2
    log.seek(0)
    text = log.read()
    assert "bad: failed: it cannot be done" in text and "a:   done: made a" in text


# ---- gc of template generations on real qcow2 chains ---------------------------------------
needs_qemu_img = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="qemu-img/qemu-io not installed (bash ci/test.sh installs qemu-utils)",
)


def _qemu_io(img: Path, cmd: str) -> None:
    os.chmod(img, 0o644)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", cmd, str(img)], check=True, capture_output=True)


@needs_qemu_img
def test_gc_removes_unused_generations_without_changing_content(
    swarm_home: Path, tmp_path: Path
) -> None:
    from agent_swarm import native
    from agent_swarm.core import Core

    swarm_home.mkdir(parents=True)
    r = Registry(swarm_home / "registry.db")
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    _qemu_io(base, "write -P 0x11 0 8M")
    r.add_base_image("b", path=str(base), format="qcow2", virtual_size=64 << 20, source="file:x")
    r.add_project("p", base_image="b", provider="libvirt", cpus=1, memory_mib=512, disk_gib=1)
    pdir = swarm_home / "projects" / "p"
    pdir.mkdir(parents=True)
    prev = base
    for n, pattern in ((1, "0x22"), (2, "0x33"), (3, "0x44")):
        g = pdir / f"gen-{n}.qcow2"
        native.create_qcow2_overlay(g, prev)
        _qemu_io(g, f"write -P {pattern} {n * 4}M 4M")
        os.chmod(g, 0o444)
        r.add_generation("p", str(g))
        prev = g
    native.create_qcow2_overlay(pdir / "disk.qcow2", prev)
    r.add_task("t", project="p", provider="libvirt", cpus=1, memory_mib=512)  # pins gen 3
    # Pin generation 1 too, with a task registered directly on it.
    r._conn.execute(
        "INSERT INTO tasks (name, project, generation, provider, cpus, memory_mib)"
        " VALUES ('old', 'p', 1, 'libvirt', 1, 512)"
    )
    before = tmp_path / "before.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(pdir / "gen-3.qcow2"), str(before)], check=True
    )
    core = Core(r)  # gc needs no provider: it never asks one
    assert [(i["project"], i["generation"]) for i in core.gc.plan()] == [("p", 2)]
    for item in core.gc.plan():
        core.gc.remove(item)
    assert sorted(p.name for p in pdir.glob("gen-*")) == ["gen-1.qcow2", "gen-3.qcow2"]
    assert [g.generation for g in r.list_generations("p")] == [1, 3]
    info = native.image_info(pdir / "gen-3.qcow2")
    assert info.backing_path == str(pdir / "gen-1.qcow2")
    assert oct(os.stat(pdir / "gen-3.qcow2").st_mode & 0o777) == "0o444"
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(before), str(pdir / "gen-3.qcow2")],
        capture_output=True,
        text=True,
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    for img in (pdir / "gen-3.qcow2", pdir / "disk.qcow2"):
        assert subprocess.run(["qemu-img", "check", "-q", str(img)]).returncode == 0
    assert core.gc.plan() == []  # gen 1 is pinned by 'old', gen 3 is the newest
    assert not list(pdir.glob(".*.tmp"))
    r.close()
