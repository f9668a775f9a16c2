"""`doctor` finds what was changed behind agent-swarm's back, and `doctor --fix` repairs it
without touching anything else."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from workflow_support import Swarm, assert_consistent, fingerprint, seeded

from fakes.provider import STATE_DIR, set_vm_state


@pytest.fixture(scope="module")
def swarm(make_swarm, base_image: Path) -> Iterator[Swarm]:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("doctor")
    seeded(s, base_image, project="p1")
    yield s


def test_doctor_finds_and_repairs(swarm: Swarm) -> None:
    s = swarm
    with s.core() as core:
        for name in ("o1", "o2", "o3", "o4"):
            core.tasks.create("p1", name, start=False)
        core.tasks.start("o3")
    (o1_port,) = s.db("SELECT port FROM ports WHERE owner_name = 'o1'")
    before = fingerprint(s, "bystander")
    gen1 = s.home / "projects" / "p1" / "gen-1.qcow2"
    gen1_before = gen1.read_bytes()

    # o1: its registry row vanished -> an orphan fake VM, files and port.
    s.execute("DELETE FROM tasks WHERE name = 'o1'")
    # o2: the provider lost its VM -> defined again from the registry.
    (s.home / STATE_DIR / "task-o2.json").unlink()
    # o3: running, but its network died -> repaired by the provider's start.
    set_vm_state(s.home, "task", "o3", network_dead=True)
    # o4: its disk vanished -> it cannot run: removed.
    (s.home / "tasks" / "o4" / "disk.qcow2").unlink()
    # Strays nobody owns: a directory, a port row, a generation file.
    (s.home / "tasks" / "stray").mkdir()
    (s.home / "tasks" / "stray" / "disk.qcow2").write_bytes(b"x")
    s.execute("INSERT INTO ports (port, owner_kind, owner_name) VALUES (48999, 'task', 'ghost')")
    orphan_gen = s.home / "projects" / "p1" / "gen-7.qcow2"
    shutil.copyfile(gen1, orphan_gen)

    views = s.json("list")
    states = {v["name"]: (v["state"], v["reason"]) for v in views}
    assert "o1" not in states
    assert states["o2"][0] == "missing"
    assert states["o3"][0] == "running"
    assert states["o4"][0] == "broken" and "disk" in states["o4"][1]

    r = s("doctor", check=False)
    assert r.returncode == 1, r.stdout
    expected = {
        "fake-task-o1: orphan-domain": "power it off and remove it",  # the fake's own name
        f"{s.home / 'tasks' / 'o1'}: orphan-files": "remove them",
        f"port {o1_port[0]}: orphan-port": "release it",
        f"{s.home / 'tasks' / 'stray'}: orphan-files": "remove them",
        "port 48999: orphan-port": "release it",
        f"{orphan_gen}: orphan-generation": "remove it",
        "task o2: missing-domain": "define the VM again from the registry",
        "task o3: no-network": "repair it while it runs (the provider's start)",
        "task o4: missing-disk": "remove the task (its VM, files, registry row)",
        # o1's row went behind the config's back: it still lists o1
        f"{s.home / 'ssh_config'}: stale-ssh-config": "write it again from the registry",
    }
    lines = r.stdout.splitlines()
    problems = [ln for ln in lines if ln.startswith("[PROBLEM] ")]
    assert len(problems) == len(expected), r.stdout
    for subject, fix in expected.items():
        # (a subject may be qualified: "fake VM fake-task-o1")
        i = next((i for i, ln in enumerate(problems) if f" {subject}: " in ln), None)
        assert i is not None, f"{subject} not reported:\n{r.stdout}"
        i = lines.index(problems[i])
        assert lines[i + 1].strip() == f"--fix will: {fix}", r.stdout
    assert "bystander" not in r.stdout
    assert f"{len(expected)} problem(s)" in r.stdout

    r = s("doctor", "--fix", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("[fixed] ") == len(expected), r.stdout
    assert "PROBLEM" not in r.stdout and "fix failed" not in r.stdout

    # Each repair did what it said, to its subject only.
    assert s.vm_state("task", "o1") is None and not (s.home / "tasks" / "o1").exists()
    assert s.db("SELECT * FROM ports WHERE owner_name IN ('o1', 'ghost')") == []
    assert not (s.home / "tasks" / "stray").exists() and not orphan_gen.exists()
    assert gen1.read_bytes() == gen1_before
    o2 = s.vm_state("task", "o2")
    assert o2 is not None and o2["defines"] == 1 and o2["state"] == "stopped"
    assert o2["spec"]["disk"] == str(s.home / "tasks" / "o2" / "disk.qcow2")
    o3 = s.vm_state("task", "o3")
    assert o3["state"] == "running" and not o3["network_dead"]
    assert o3["network_repairs"] == 1 and o3["boots"] == 1  # repaired, not rebooted
    assert s.vm_state("task", "o4") is None and "o4" not in s.names("tasks")
    assert fingerprint(s, "bystander") == before
    assert sorted(s.names("tasks")) == ["bystander", "o2", "o3"]
    assert_consistent(s)

    r = s("doctor")
    assert "All consistent" in r.stdout
