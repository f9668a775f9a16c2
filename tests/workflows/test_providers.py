"""Every VM row records its provider, and later commands use the recorded one, whatever the
default is; an unavailable provider makes its VMs show as broken, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from workflow_support import Swarm, seeded

UNSET = {"AGENT_SWARM_PROVIDER": None}  # the default: this platform's (libvirt here)
DOWN = {"AGENT_SWARM_FAKE_FAIL": "probe:*"}  # the fake's host probe fails


@pytest.fixture(scope="module")
def swarm(make_swarm, base_image: Path) -> Iterator[Swarm]:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("providers")
    seeded(s, base_image, project="p1")  # p1 stopped, bystander stopped
    with s.core() as core:
        core.tasks.create("p1", "up")  # running
    yield s


def test_rows_record_their_provider(swarm: Swarm) -> None:
    for table in ("projects", "tasks", "generations"):
        rows = swarm.db(f"SELECT provider FROM {table}")
        assert rows and {r[0] for r in rows} == {"fake"}, table


def test_later_commands_use_the_recorded_provider(swarm: Swarm) -> None:
    states = {v["name"]: v["state"] for v in swarm.json("list", env=UNSET)}
    assert states == {"bystander": "stopped", "up": "running"}
    (p1,) = swarm.json("project", "list", env=UNSET)
    assert p1["state"] == "stopped"
    swarm("stop", "up", env=UNSET)
    assert swarm.vm_state("task", "up")["state"] == "stopped"
    swarm("start", "up", env=UNSET)
    st = swarm.vm_state("task", "up")
    assert st["state"] == "running" and st["boots"] == 2


def test_an_unavailable_provider(swarm: Swarm) -> None:
    fake_vms = {k: swarm.vm_state(*k) for k in swarm.fake_vms()}
    r = swarm("list", env=DOWN)
    assert r.returncode == 0
    rows = [ln for ln in r.stdout.splitlines()[1:] if ln.strip()]
    assert len(rows) == 2
    for ln in rows:
        assert "broken (provider fake unavailable:" in ln, ln
    views = swarm.json("list", env=DOWN)
    assert {v["name"]: v["state"] for v in views} == {"bystander": "broken", "up": "broken"}
    assert all("AGENT_SWARM_FAKE_FAIL" in v["reason"] for v in views)

    r = swarm("doctor", env=DOWN, check=False)
    assert r.returncode == 1
    assert (
        "[PROBLEM] provider fake: provider-unavailable: the fake provider cannot run on this "
        "host: made unavailable by AGENT_SWARM_FAKE_FAIL (unset it); its VMs were not checked"
    ) in r.stdout
    assert "needs a manual decision" in r.stdout
    r = swarm("doctor", "--fix", env=DOWN, check=False)
    assert r.returncode == 1 and "[fixed]" not in r.stdout
    # Creating on it fails up front (exit 4: provider unavailable), and nothing is created.
    r = swarm("create", "p1", "t-down", "--no-start", env=DOWN, check=False)
    assert r.returncode == 4 and "fake provider cannot run on this host" in r.stderr
    assert "t-down" not in swarm.names("tasks")
    # Nothing was touched while the provider was away.
    assert {k: swarm.vm_state(*k) for k in swarm.fake_vms()} == fake_vms
    assert swarm("doctor").returncode == 0


def test_providers_json_lists_the_registered_fake(swarm: Swarm) -> None:
    data = {d["provider"]: d for d in swarm.json("providers")}
    assert data["fake"]["available"] is True and data["fake"]["default"] is True
    assert data["fake"]["reason"] is None
    assert "libvirt" in data
    down = {d["provider"]: d for d in swarm.json("providers", env={**DOWN, **UNSET})}
    assert down["fake"]["available"] is False and down["fake"]["default"] is False
    assert "AGENT_SWARM_FAKE_FAIL" in down["fake"]["reason"]
    gone = swarm.json("providers", env={"AGENT_SWARM_TEST_PROVIDERS": None, **UNSET})
    assert "fake" not in {d["provider"] for d in gone}


def test_state_directories_side_by_side_do_not_see_each_other(
    tmp_path: Path, base_image: Path, pycache: Path
) -> None:
    """A provider lists the VMs of its own state directory only, even when a sibling
    directory has VMs of the same names in other states."""
    a = Swarm(tmp_path / "a", pycache=pycache)
    b = Swarm(tmp_path / "b", pycache=pycache)
    seeded(a, base_image, project="pa", bystander="shared")  # a's "shared": stopped
    seeded(b, base_image, project="pb", bystander=None)
    with b.core() as core:
        core.tasks.create("pb", "shared")  # b's "shared": running
    assert a.vm_state("task", "shared")["state"] == "stopped"
    assert a.views()["shared"].state == "stopped"
    assert [f.as_dict() for f in a.diagnose()] == []


def test_an_interrupted_delete_waits_for_its_provider(swarm: Swarm) -> None:
    """Settling an interrupted delete needs the VM's provider (its journal entry names it):
    while it is down, doctor only reports it and --fix changes nothing (before schema 4
    recovery removed the files, skipped the VM and said "fixed")."""
    with swarm.core() as core:
        core.tasks.create("p1", "half", start=False)
    swarm.crash("delete:undefined", "delete", "half")  # its fake VM is gone, files are not
    assert swarm.db("SELECT provider FROM journal WHERE name = 'half'")[0][0] == "fake"
    files = swarm.home / "tasks" / "half"
    assert files.is_dir()
    r = swarm("doctor", "--fix", env=DOWN, check=False)
    assert r.returncode == 1 and "[fixed]" not in r.stdout, r.stdout
    assert "task half: interrupted" in r.stdout and "fake provider cannot run" in r.stdout
    assert files.is_dir() and swarm.db("SELECT name FROM tasks WHERE name = 'half'")
    r = swarm("doctor", "--fix", check=False)
    assert r.returncode == 0 and "[fixed] task half: interrupted" in r.stdout, r.stdout
    assert not files.exists() and not swarm.db("SELECT name FROM tasks WHERE name = 'half'")
