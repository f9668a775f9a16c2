"""Bulk create/delete (per-item results, one ssh_config at the end) and capacity refusal
(ratios from config.toml against the VMs the provider reports running)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from workflow_support import Swarm, assert_consistent, fingerprint, seeded

from fakes.provider import set_vm_state


@pytest.fixture(scope="module")
def swarm(make_swarm, base_image: Path) -> Iterator[Swarm]:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("bulk")
    seeded(s, base_image, project="p1")
    with s.core() as core:
        core.projects.create("bulkp", cpus=1, memory_mib=512, disk_gib=1, start=False)
        core.seal.seal("bulkp")
    yield s


def hosts(swarm: Swarm) -> set[str]:
    cfg = (swarm.home / "ssh_config").read_text()
    return {ln.split()[1] for ln in cfg.splitlines() if ln.startswith("Host ")}


def test_bulk_create_with_a_duplicate_and_an_invalid_name(swarm: Swarm) -> None:
    names = [f"b{i}" for i in range(8)]
    before = fingerprint(swarm, "bystander")
    args = [*names[:4], "bystander", "bad-", *names[4:], "b0"]  # b0 twice: created once
    r = swarm("bulk", "create", "bulkp", *args, "--no-start", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "8 of 10 created; failed: bystander, bad-" in r.stdout
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:-1]}
    assert "task 'bystander' already exists" in rows["bystander"]
    assert "invalid task name 'bad-'" in rows["bad-"]
    for n in names:
        assert " ok " in rows[n] and "created (generation 1, not started)" in rows[n]
    assert "note: b0 was named more than once; created once" in r.stderr

    tasks = {r["name"]: r["project"] for r in swarm.db("SELECT name, project FROM tasks")}
    assert tasks == {**dict.fromkeys(names, "bulkp"), "bystander": "p1"}
    for n in names:
        assert swarm.vm_state("task", n)["state"] == "stopped"
    # One ssh_config, written at the end, holds every VM.
    assert {f"{n}.agent-swarm" for n in names} <= hosts(swarm)
    assert fingerprint(swarm, "bystander") == before
    assert_consistent(swarm)

    r = swarm("bulk", "delete", "--project", "bulkp")
    assert "8 of 8 deleted" in r.stdout
    assert swarm.names("tasks") == ["bystander"]
    assert not {f"{n}.agent-swarm" for n in names} & hosts(swarm)
    assert fingerprint(swarm, "bystander") == before
    assert_consistent(swarm)


def host_memory(swarm: Swarm) -> int:
    from agent_swarm import capacity

    return capacity.host(swarm.home).memory_bytes


def write_capacity(swarm: Swarm, *, cpu_ratio: float, memory_ratio: float) -> None:
    (swarm.home / "config.toml").write_text(
        f"[capacity]\ncpu_ratio = {cpu_ratio!r}\nmemory_ratio = {memory_ratio!r}\n"
    )


def running(swarm: Swarm) -> set[str]:
    return {n for k, n in swarm.fake_vms() if swarm.vm_state(k, n)["state"] == "running"}


def test_capacity_refusal_and_force(swarm: Swarm) -> None:
    assert running(swarm) == set()
    cpus = os.cpu_count() or 1
    big_mem = 1000.0
    # Two 1-vCPU VMs fit, a third does not (memory is no limit here).
    write_capacity(swarm, cpu_ratio=2.5 / cpus, memory_ratio=big_mem)
    try:
        with swarm.core() as core:
            core.tasks.create("p1", "c1")
            core.tasks.create("p1", "c2")
        assert running(swarm) == {"c1", "c2"}
        r = swarm("create", "p1", "c3", check=False)
        assert r.returncode == 1
        assert "creating task c3 would oversubscribe this host on top of 2 running VMs" in r.stderr
        assert "3 vCPUs > 2.5" in r.stderr
        assert "[capacity] in" in r.stderr and "--force" in r.stderr
        # Refused before anything stays: no row, port, files or fake VM.
        assert "c3" not in swarm.names("tasks") and swarm.vm_state("task", "c3") is None
        assert not (swarm.home / "tasks" / "c3").exists()
        r = swarm("bulk", "create", "p1", "c3", "c4", check=False)
        assert r.returncode == 1 and "creating 2 task VMs would oversubscribe" in r.stderr
        assert {"c3", "c4"}.isdisjoint(swarm.names("tasks"))
        assert_consistent(swarm)

        swarm("create", "p1", "c3", "--force")
        assert running(swarm) == {"c1", "c2", "c3"}

        # What counts is what the provider reports running now: two VMs stopped from inside.
        set_vm_state(swarm.home, "task", "c1", state="stopped")
        set_vm_state(swarm.home, "task", "c3", state="stopped")
        swarm("create", "p1", "c4")
        assert running(swarm) == {"c2", "c4"}

        # The same with memory as the limit: room for two 512 MiB VMs.
        budget = (2 * 512 + 256) << 20
        write_capacity(
            swarm, cpu_ratio=100.0, memory_ratio=budget / (host_memory(swarm) - (1 << 30))
        )
        r = swarm("create", "p1", "c5", check=False)
        assert r.returncode == 1 and "GiB RAM >" in r.stderr and "memory_ratio" in r.stderr
        assert "c5" not in swarm.names("tasks")
        # `start` of a stopped VM is checked too.
        r = swarm("start", "c1", check=False)
        assert r.returncode == 1 and "starting task c1 would oversubscribe" in r.stderr
        swarm("start", "c1", "--force")
        assert running(swarm) == {"c1", "c2", "c4"}
    finally:
        (swarm.home / "config.toml").unlink(missing_ok=True)
    assert_consistent(swarm)
