"""Swarm operations against the real provider: concurrent creates from separate processes,
bulk create/delete, capacity refusal, kill -9 at every recorded step + doctor --fix, orphans.

Most VMs here are defined but never booted (`--no-start`): that exercises everything but the
boot (disk, seed, port, domain, registry) in a fraction of a second per VM. One test boots
three tasks at once for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests_support import Swarm, agent_swarm_cmd, domains_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def project(swarm: Swarm) -> Iterator[str]:
    swarm("init-base", "--build", "debian-12", timeout=1200)
    # Never booted, so sealing needs no identity reset: its generation 1 is the clean base.
    swarm("project", "create", "ops", "--no-start", "--memory", "512M", "--cpus", "1")
    swarm("project", "stop", "ops")
    swarm("create", "ops", "bystander", "--no-start")
    yield "ops"
    swarm("bulk", "delete", "--project", "ops", check=False)
    swarm("project", "delete", "ops", check=False)


def popen(swarm: Swarm, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*agent_swarm_cmd(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "AGENT_SWARM_HOME": str(swarm.home), **(env or {})},
    )


def registry(swarm: Swarm) -> dict[str, object]:
    con = sqlite3.connect(swarm.home / "registry.db")
    try:
        return {
            "tasks": sorted(r[0] for r in con.execute("SELECT name FROM tasks")),
            "projects": sorted(r[0] for r in con.execute("SELECT name FROM projects")),
            "ports": sorted(
                (r[0], r[1], r[2])
                for r in con.execute("SELECT port, owner_kind, owner_name FROM ports")
            ),
            "journal": con.execute("SELECT COUNT(*) FROM journal").fetchone()[0],
        }
    finally:
        con.close()


def assert_consistent(swarm: Swarm) -> None:
    """Registry rows, ports, domains, directories and the ssh_config all describe the same
    set of VMs, and `doctor` agrees."""
    reg = registry(swarm)
    vms = {("task", t) for t in reg["tasks"]} | {("project", p) for p in reg["projects"]}  # type: ignore[attr-defined]
    tag = hashlib.sha256(str(swarm.home.resolve()).encode()).hexdigest()[:6]
    doms = set()
    for d in domains_of(swarm.home):
        kind, _, name = d[len(f"agent-swarm-{tag}-") :].partition("-")
        doms.add((kind, name))
    assert doms == vms
    ports = reg["ports"]
    assert {(k, n) for _, k, n in ports} == vms  # type: ignore[attr-defined]
    assert len({p for p, _, _ in ports}) == len(ports)  # type: ignore[attr-defined]
    dirs = {("task", p.name) for p in (swarm.home / "tasks").glob("*")} | {
        ("project", p.name) for p in (swarm.home / "projects").glob("*")
    }
    assert dirs == vms
    assert reg["journal"] == 0
    cfg = (swarm.home / "ssh_config").read_text()
    for kind, name in vms:
        alias = f"{name}.agent-swarm" if kind == "task" else f"{name}.project.agent-swarm"
        assert f"Host {alias}\n" in cfg
    assert cfg.count("Host ") == len(vms)
    r = swarm("doctor", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "All consistent" in r.stdout


def fingerprint(swarm: Swarm, task: str) -> tuple[object, ...]:
    """What must not change for a bystander VM: its row, port, domain XML and files."""
    con = sqlite3.connect(swarm.home / "registry.db")
    try:
        row = con.execute("SELECT * FROM tasks WHERE name = ?", (task,)).fetchone()
        port = con.execute("SELECT port FROM ports WHERE owner_name = ?", (task,)).fetchone()
    finally:
        con.close()
    tag = hashlib.sha256(str(swarm.home.resolve()).encode()).hexdigest()[:6]
    xml = subprocess.run(
        ["virsh", "-c", "qemu:///system", "dumpxml", f"agent-swarm-{tag}-task-{task}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((swarm.home / "tasks" / task).iterdir())
        if p.is_file()
    }
    return (row, port, xml, files)


def test_eight_concurrent_creates_then_deletes_from_separate_processes(
    swarm: Swarm, project: str
) -> None:
    names = [f"c{i}" for i in range(8)]
    procs = [popen(swarm, "create", project, n, "--no-start") for n in names]
    listers = [popen(swarm, "list", "--json") for _ in range(3)]
    for p in procs + listers:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "Traceback" not in err
    reg = registry(swarm)
    assert set(names) <= set(reg["tasks"])  # type: ignore[arg-type]
    assert_consistent(swarm)
    for n in names:
        r = subprocess.run(
            ["qemu-img", "check", str(swarm.home / "tasks" / n / "disk.qcow2")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
    # Delete them all at once while `list` runs too.
    procs = [popen(swarm, "delete", n) for n in names]
    listers = [popen(swarm, "list", "--json") for _ in range(3)]
    for p in procs + listers:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert not set(names) & set(registry(swarm)["tasks"])  # type: ignore[arg-type]
    assert_consistent(swarm)


def test_three_concurrent_full_boots(swarm: Swarm, project: str) -> None:
    names = ["b0", "b1", "b2"]
    procs = [popen(swarm, "create", project, n, "--memory", "512M") for n in names]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
    assert_consistent(swarm)
    seen = {swarm.run(n, "hostname").strip() for n in names}
    assert seen == set(names)
    views = json.loads(swarm("--json", "list").stdout)
    running = [v for v in views if v["name"] in names]
    assert [v["state"] for v in running] == ["running"] * 3
    assert len({v["ssh"] for v in running}) == 3
    status = json.loads(swarm("--json", "status").stdout)
    assert status["running"]["vms"] == 3
    assert status["running"]["memory_mib"] == 3 * 512
    r = swarm("bulk", "delete", *names)
    assert "3 of 3 deleted" in r.stdout
    assert_consistent(swarm)


def test_bulk_create_with_one_impossible_item(swarm: Swarm, project: str) -> None:
    r = swarm("bulk", "create", project, "k1", "bystander", "k2", "--no-start", check=False)
    assert r.returncode == 1
    assert "2 of 3 created; failed: bystander" in r.stdout
    assert "already exists" in r.stdout
    assert "Traceback" not in r.stderr
    data = json.loads(swarm("--json", "bulk", "delete", "k1", "k2", "nope", check=False).stdout)
    assert {d["name"]: d["ok"] for d in data} == {"k1": True, "k2": True, "nope": False}
    assert_consistent(swarm)


def test_capacity_refusal_and_force(swarm: Swarm, project: str) -> None:
    tight = {"AGENT_SWARM_MEMORY_RATIO": "0.01"}  # 1% of this host's RAM: < one 512 MiB VM
    r = swarm("create", project, "big", env=tight, check=False)
    assert r.returncode == 1
    assert "would oversubscribe this host" in r.stderr and "--force" in r.stderr
    assert "Traceback" not in r.stderr
    assert "big" not in registry(swarm)["tasks"]  # type: ignore[operator]
    r = swarm("bulk", "create", project, "big1", "big2", env=tight, check=False)
    assert r.returncode == 1 and "creating 2 task VMs would oversubscribe" in r.stderr
    assert_consistent(swarm)
    swarm("create", project, "big", "--force", "--no-wait", env=tight)
    views = {v["name"]: v for v in json.loads(swarm("--json", "list").stdout)}
    assert views["big"]["state"] in ("running", "starting")
    swarm("delete", "big")
    assert_consistent(swarm)


CREATE_STEPS = ["begin", "registered", "port", "disk", "seed", "defined"]
DELETE_STEPS = ["begin", "undefined", "files-removed"]
SEAL_STEPS = ["begin", "stopped", "sealing", "renamed", "registered", "overlay", "seeded"]


def crash(swarm: Swarm, at: str, *args: str) -> None:
    p = popen(swarm, *args, env={"AGENT_SWARM_TEST_CRASH_AT": at})
    p.communicate(timeout=300)
    assert p.returncode == -9, f"{at}: the crash hook did not fire"


def doctor_fixes(swarm: Swarm, subject: str) -> None:
    r = swarm("doctor", check=False)
    assert r.returncode == 1 and subject in r.stdout and "--fix will" in r.stdout
    r = swarm("doctor", "--fix", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[fixed]" in r.stdout


@pytest.mark.parametrize("step", CREATE_STEPS)
def test_kill_during_create(swarm: Swarm, project: str, step: str) -> None:
    before = fingerprint(swarm, "bystander")
    crash(swarm, f"create:{step}", "create", project, "victim", "--no-start")
    if step != "begin":
        views = {v["name"]: v for v in json.loads(swarm("--json", "list").stdout)}
        assert views["victim"]["state"] == "broken"
        assert "doctor --fix" in views["victim"]["reason"]
        # Another operation on it says what happened instead of failing obscurely.
        r = swarm("delete", "victim", check=False)
        assert r.returncode == 1 and "interrupted" in r.stderr and "doctor --fix" in r.stderr
    doctor_fixes(swarm, "task victim")
    assert "victim" not in registry(swarm)["tasks"]  # type: ignore[operator]
    assert_consistent(swarm)
    assert fingerprint(swarm, "bystander") == before
    swarm("create", project, "victim", "--no-start")  # the name is usable again
    swarm("delete", "victim")


@pytest.mark.parametrize("step", DELETE_STEPS)
def test_kill_during_delete(swarm: Swarm, project: str, step: str) -> None:
    swarm("create", project, "victim", "--no-start")
    before = fingerprint(swarm, "bystander")
    crash(swarm, f"delete:{step}", "delete", "victim")
    doctor_fixes(swarm, "task victim")
    assert "victim" not in registry(swarm)["tasks"]  # type: ignore[operator]
    assert_consistent(swarm)
    assert fingerprint(swarm, "bystander") == before


@pytest.mark.parametrize("step", SEAL_STEPS)
def test_kill_during_seal(swarm: Swarm, project: str, step: str) -> None:
    swarm("project", "create", "sealme", "--no-start", "--memory", "512M", "--cpus", "1")
    before = fingerprint(swarm, "bystander")
    try:
        crash(swarm, f"seal:{step}", "project", "stop", "sealme")
        doctor_fixes(swarm, "project sealme")
        assert_consistent(swarm)
        assert fingerprint(swarm, "bystander") == before
        # Sealing completes (or was completed), and tasks clone it.
        swarm("project", "stop", "sealme")
        swarm("create", "sealme", "child", "--no-start")
        for img in [
            *(swarm.home / "projects" / "sealme").glob("*.qcow2"),
            swarm.home / "tasks" / "child" / "disk.qcow2",
        ]:
            r = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, timeout=60)
            assert r.returncode == 0, img
        gens = sorted(p.name for p in (swarm.home / "projects" / "sealme").glob("gen-*"))
        assert gens == ["gen-1.qcow2"]
        assert_consistent(swarm)
    finally:
        swarm("delete", "child", check=False)
        swarm("project", "delete", "sealme", check=False)


def test_doctor_finds_and_repairs_orphans(swarm: Swarm, project: str, tmp_path: Path) -> None:
    tag = hashlib.sha256(str(swarm.home.resolve()).encode()).hexdigest()[:6]
    swarm("bulk", "create", project, "o1", "o2", "o3", "o4", "--no-start")
    before = fingerprint(swarm, "bystander")
    virsh = ["virsh", "-c", "qemu:///system"]
    # o1: its domain vanished behind our back -> defined again.
    subprocess.run([*virsh, "undefine", f"agent-swarm-{tag}-task-o1"], check=True, timeout=60)
    # o2: its disk vanished -> the task is removed.
    (swarm.home / "tasks" / "o2" / "disk.qcow2").unlink()
    # o3: its registry row vanished -> orphan domain, files and port.
    con = sqlite3.connect(swarm.home / "registry.db")
    con.execute("DELETE FROM tasks WHERE name = 'o3'")
    con.commit()
    con.close()
    # A stray directory nobody owns.
    (swarm.home / "tasks" / "stray").mkdir()
    views = {v["name"]: v for v in json.loads(swarm("--json", "list").stdout)}
    assert views["o1"]["state"] == "missing"
    assert views["o2"]["state"] == "broken" and "disk" in views["o2"]["reason"]
    r = swarm("doctor", check=False)
    assert r.returncode == 1
    for needle in (
        "task o1: missing-domain",
        "task o2: missing-disk",
        f"domain agent-swarm-{tag}-task-o3: orphan-domain",
        "port ",
        "stray: orphan-files",
    ):
        assert needle in r.stdout, (needle, r.stdout)
    swarm("doctor", "--fix")
    reg = registry(swarm)
    assert "o1" in reg["tasks"] and "o2" not in reg["tasks"]  # type: ignore[operator]
    assert_consistent(swarm)
    assert fingerprint(swarm, "bystander") == before
    swarm("bulk", "delete", "o1", "o4")
    assert_consistent(swarm)


def test_access_to_a_stopped_vm_says_how_to_start_it(
    swarm: Swarm, project: str, tmp_path: Path
) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    for args in (
        ("run", "bystander", "true"),
        ("ssh", "bystander"),
        ("cp", str(f), "bystander:/tmp/"),
    ):
        r = swarm(*args, check=False)
        assert r.returncode == 1, args
        assert "task 'bystander' is stopped" in r.stderr
        assert "agent-swarm start bystander" in r.stderr
        assert "Traceback" not in r.stderr


def test_status_shows_allocation_disk_and_pinned_generations(swarm: Swarm, project: str) -> None:
    data = json.loads(swarm("--json", "status").stdout)
    assert data["host"]["cpus"] >= 1 and data["host"]["memory_bytes"] > 0
    (ops,) = [p for p in data["projects"] if p["name"] == project]
    (gen,) = ops["generations"]
    assert gen["generation"] == 1 and gen["newest"] and "bystander" in gen["tasks"]
    assert ops["allocated"]["running_vms"] == 0
    assert all(v["disk_bytes"] is not None for v in ops["vms"])
    human = swarm("status").stdout
    assert f"project {project}:" in human and "generation 1:" in human and "used by" in human
    r = swarm("gc")
    assert "Nothing to collect" in r.stdout  # generation 1 is pinned and the newest


def test_doctor_leaves_a_vm_with_a_live_operation_alone(swarm: Swarm, project: str) -> None:
    import time

    from agent_swarm import procs

    owner = subprocess.Popen(["sleep", "120"])  # stands in for a process creating task 'busy'
    try:
        time.sleep(0.2)
        con = sqlite3.connect(swarm.home / "registry.db")
        con.execute(
            "INSERT INTO journal (op, kind, name, step, pid, pid_start)"
            " VALUES ('create', 'task', 'busy', 'disk', ?, ?)",
            (owner.pid, procs.start_time(owner.pid)),
        )
        con.commit()
        con.close()
        (swarm.home / "tasks" / "busy").mkdir()  # what that create has written so far
        r = swarm("doctor", "--fix", check=False)
        assert "[busy] task busy: busy: create in progress" in r.stdout
        assert (swarm.home / "tasks" / "busy").is_dir()
        r = swarm("delete", "busy", check=False)
        assert r.returncode == 3  # no such task (yet): the row is not there
        r = swarm("create", project, "busy", "--no-start", check=False)
        assert r.returncode == 1 and "busy: create in progress" in r.stderr
    finally:
        owner.kill()
        owner.wait()
    # Its owner is gone now: the entry is an interrupted create, and doctor settles it.
    swarm("doctor", "--fix")
    assert not (swarm.home / "tasks" / "busy").exists()
    assert_consistent(swarm)


def test_kill_after_the_identity_reset_of_a_booted_project(swarm: Swarm, project: str) -> None:
    """The likeliest real interruption (Ctrl-C or a crash while the VM shuts down): its
    identity is already reset, so doctor finishes the seal instead of forgetting it."""
    swarm("project", "create", "booted", "--memory", "512M", "--cpus", "1")
    try:
        swarm.run("booted", "echo kept > ~/kept.txt && sync", project=True)
        crash(swarm, "seal:identity-reset", "project", "stop", "booted")
        views = {v["name"]: v for v in json.loads(swarm("--json", "project", "list").stdout)}
        assert views["booted"]["state"] == "broken"
        r = swarm("doctor", check=False)
        assert "the identity was reset" in r.stdout and "stop the VM and seal it" in r.stdout
        swarm("doctor", "--fix")
        gen1 = swarm.home / "projects" / "booted" / "gen-1.qcow2"
        assert gen1.exists() and (gen1.stat().st_mode & 0o777) == 0o444
        r = subprocess.run(["qemu-img", "check", str(gen1)], capture_output=True, timeout=60)
        assert r.returncode == 0
        assert_consistent(swarm)
        swarm("create", "booted", "from-booted", "--no-start")
        swarm("delete", "from-booted")
    finally:
        swarm("project", "delete", "booted", check=False)
