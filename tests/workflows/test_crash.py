"""kill -9 at every step of create, delete, seal and gc (the AGENT_SWARM_TEST_CRASH_AT hook),
then `doctor` explains it, `doctor --fix` repairs it, a bystander task is untouched, registry
and disk agree, and the operation can be completed afterwards.

What a test is not about (booting the project before a seal, the victim of a delete) is set
up through the core API in this process; the killed command, `doctor --fix` and the command
that completes the operation are the real CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from workflow_support import (
    GEN_MODE,
    Swarm,
    assert_consistent,
    assert_qcow2_ok,
    fingerprint,
    qemu_img,
    qemu_io_read,
    qemu_io_write,
    seeded,
)

CREATE_STEPS = ["begin", "registered", "port", "disk", "seed", "defined"]
DELETE_STEPS = ["begin", "undefined", "files-removed"]
SEAL_STEPS = [
    "begin",
    "resetting",
    "identity-reset",
    "stopped",
    "sealing",
    "renamed",
    "registered",
    "overlay",
    "seeded",
]
GC_STEPS = ["begin", "detached", "forgotten"]
GC_PARAMS = GC_STEPS


def test_the_steps_here_are_the_operations_steps() -> None:
    """A step added to an operation must be crash-tested here too."""
    from agent_swarm.ops.gc import GcOp
    from agent_swarm.ops.seal import SealOp
    from agent_swarm.ops.vms import CreateOp, DeleteOp

    assert list(CreateOp.steps) == CREATE_STEPS
    assert list(DeleteOp.steps) == DELETE_STEPS
    assert list(SealOp.steps) == SEAL_STEPS
    assert list(GcOp.steps) == GC_STEPS


@pytest.fixture(scope="module")
def swarm(make_swarm, base_image: Path) -> Iterator[Swarm]:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("crash")
    seeded(s, base_image, project="ops")
    yield s


def interrupted(swarm: Swarm, subject: str, *, cli: bool) -> tuple[str, str]:
    """`doctor` (no --fix) reports an interrupted operation on ``subject`` and says what --fix
    will do: (its detail, its fix). ``cli``: the real command (exit 1, its text); else the
    same diagnosis in this process (cheaper)."""
    if not cli:
        found = [f for f in swarm.diagnose() if f.subject == subject]
        assert [f.problem for f in found] == ["interrupted"], [f.as_dict() for f in found]
        assert found[0].fix and found[0].action is not None
        return found[0].detail, found[0].fix
    r = swarm("doctor", check=False)
    assert r.returncode == 1, r.stdout
    lines = r.stdout.splitlines()
    head = f"[PROBLEM] {subject}: interrupted: "
    i = next((i for i, ln in enumerate(lines) if ln.startswith(head)), None)
    assert i is not None, f"doctor does not report {subject}:\n{r.stdout}"
    fix = lines[i + 1].strip()
    assert fix.startswith("--fix will: "), r.stdout
    assert r.stdout.rstrip().endswith("`agent-swarm doctor --fix` repairs them."), r.stdout
    return lines[i][len(head) :], fix[len("--fix will: ") :]


def doctor_fixes(swarm: Swarm, subject: str) -> None:
    r = swarm("doctor", "--fix", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"[fixed] {subject}: interrupted: " in r.stdout, r.stdout
    assert "PROBLEM" not in r.stdout and "fix failed" not in r.stdout, r.stdout


@pytest.mark.parametrize("step", CREATE_STEPS)
def test_kill_during_create(swarm: Swarm, step: str) -> None:
    name = f"cv-{step}"
    before = fingerprint(swarm, "bystander")
    swarm.crash(f"create:{step}", "create", "ops", name, "--no-start")
    # Registered in the same transaction as its journal entry: shown as interrupted.
    view = swarm.views()[name]
    assert view.state == "broken" and "doctor --fix" in (view.reason or ""), view
    detail, fix = interrupted(swarm, f"task {name}", cli=step == CREATE_STEPS[0])
    assert detail.startswith("create interrupted at step") and fix == "remove the half-created VM"
    doctor_fixes(swarm, f"task {name}")
    assert name not in swarm.names("tasks")
    assert swarm.vm_state("task", name) is None
    assert not (swarm.home / "tasks" / name).exists()
    assert_consistent(swarm)
    assert fingerprint(swarm, "bystander") == before
    # The name is usable again: the create completes.
    swarm("create", "ops", name, "--no-start")
    assert swarm.vm_state("task", name)["state"] == "stopped"
    assert_consistent(swarm)


@pytest.mark.parametrize("step", DELETE_STEPS)
def test_kill_during_delete(swarm: Swarm, step: str) -> None:
    name = f"dv-{step}"
    with swarm.core() as core:
        core.tasks.create("ops", name, start=False)
    before = fingerprint(swarm, "bystander")
    swarm.crash(f"delete:{step}", "delete", name)
    view = swarm.views()[name]  # a task's row goes last
    assert view.state == "broken" and "doctor --fix" in (view.reason or ""), view
    detail, fix = interrupted(swarm, f"task {name}", cli=step == DELETE_STEPS[0])
    assert detail.startswith("delete interrupted at step") and fix == "finish deleting it"
    doctor_fixes(swarm, f"task {name}")
    assert name not in swarm.names("tasks")
    assert swarm.vm_state("task", name) is None
    assert not (swarm.home / "tasks" / name).exists()
    assert_consistent(swarm)
    assert fingerprint(swarm, "bystander") == before
    with swarm.core() as core:  # the name is free again
        core.tasks.create("ops", name, start=False)
    assert_consistent(swarm, doctor=False)


SEALME = "sealme"


@pytest.mark.parametrize("step", SEAL_STEPS)
def test_kill_during_seal(swarm: Swarm, step: str) -> None:
    """`project stop` of a booted project (so its identity is reset in the guest)."""
    with swarm.core() as core:
        if SEALME in swarm.names("projects"):
            core.projects.start(SEALME)
        else:
            core.projects.create(SEALME, cpus=1, memory_mib=512, disk_gib=1)
    pdir = swarm.home / "projects" / SEALME
    i = SEAL_STEPS.index(step)
    qemu_io_write(pdir / "disk.qcow2", 0x40 + i, f"{4 + i}M")  # the guest's work: seal it
    n = len(swarm.gen_files(SEALME)) + 1  # the generation this seal makes
    resets = swarm.vm_state("project", SEALME)["identity_resets"]
    before = fingerprint(swarm, "bystander")

    swarm.crash(f"seal:{step}", "project", "stop", SEALME)
    assert swarm.views()[SEALME].state == "broken"
    if step == "identity-reset":
        # Busy until doctor settles the seal (the guest has no identity: it must not boot).
        r = swarm("project", "start", SEALME, check=False)
        assert r.returncode == 1 and "doctor --fix" in r.stderr, r.stderr
    detail, _ = interrupted(swarm, f"project {SEALME}", cli=step == SEAL_STEPS[0])
    assert detail.startswith("seal interrupted at step"), detail
    doctor_fixes(swarm, f"project {SEALME}")
    assert_consistent(swarm)
    assert fingerprint(swarm, "bystander") == before

    # Sealing completes (doctor rolled it forward, or `project stop` seals again) ...
    swarm("project", "stop", SEALME)
    gens = swarm.gen_files(SEALME)
    newest = pdir / f"gen-{n}.qcow2"
    assert gens[-1] == newest and len(gens) == n, [g.name for g in gens]
    assert newest.stat().st_mode & 0o777 == GEN_MODE
    st = swarm.vm_state("project", SEALME)
    assert st["state"] == "stopped"
    assert st["identity_resets"] > resets  # the generation has no identity
    # ... holding what the guest wrote, and a task clones it.
    child = f"sc-{step}"
    with swarm.core() as core:
        core.tasks.create(SEALME, child, start=False)
    from agent_swarm import native

    child_disk = swarm.home / "tasks" / child / "disk.qcow2"
    assert native.image_info(child_disk, chain=False).backing_path == str(newest)
    qemu_io_read(child_disk, 0x40 + i, f"{4 + i}M")
    assert_qcow2_ok(newest, child_disk)
    assert_consistent(swarm)


GCP = "gcp"


@pytest.mark.parametrize("step", GC_PARAMS)
def test_kill_during_gc(swarm: Swarm, step: str, tmp_path: Path) -> None:
    """`gc --yes` with one collectable generation: the project's previous one."""
    pdir = swarm.home / "projects" / GCP
    with swarm.core() as core:
        if GCP not in swarm.names("projects"):
            core.projects.create(GCP, cpus=1, memory_mib=512, disk_gib=1)
            qemu_io_write(pdir / "disk.qcow2", 0x61, "1M")
            core.seal.seal(GCP)
        core.projects.start(GCP)
        qemu_io_write(pdir / "disk.qcow2", 0x62, "2M")
        core.seal.seal(GCP)
    gens = swarm.gen_files(GCP)
    *older, newest = gens  # (the previous test collected its older ones)
    assert older
    snapshot = tmp_path / "newest.raw"
    assert qemu_img("convert", "-O", "raw", str(newest), str(snapshot)).returncode == 0
    before = fingerprint(swarm, "bystander")

    swarm.crash(f"gc:{step}", "gc", "--yes")
    detail, _ = interrupted(swarm, f"project {GCP}", cli=True)
    assert detail.startswith("gc interrupted at step"), detail
    # gc has nothing to undo: doctor must not send the user off to seal the project again.
    assert "seal" not in detail.lower() and "project stop" not in detail, detail
    doctor_fixes(swarm, f"project {GCP}")
    assert fingerprint(swarm, "bystander") == before

    # gc completes: the older generation goes, the newest reads as it did.
    swarm("gc", "--yes")
    assert swarm.gen_files(GCP) == [newest], "gc did not finish removing the generation"
    assert not any(g.exists() for g in older)
    rows = swarm.db("SELECT generation FROM generations WHERE project = ?", (GCP,))
    assert [r[0] for r in rows] == [int(newest.stem.split("-")[1])]
    r = qemu_img("compare", "-f", "raw", "-F", "qcow2", str(snapshot), str(newest))
    assert r.returncode == 0, r.stdout
    assert newest.stat().st_mode & 0o777 == GEN_MODE
    assert_qcow2_ok(newest, pdir / "disk.qcow2")
    assert_consistent(swarm)


def test_a_create_killed_after_its_rollback_removed_the_row(swarm: Swarm) -> None:
    """An interrupted create past "begin" whose row is already gone (a failed create's
    rollback removes the row first) still has its files removed, not just its entry."""

    swarm.execute(
        "INSERT INTO journal (op, kind, name, step, pid, pid_start, provider)"
        " VALUES ('create', 'task', 'ghost', 'disk', 999999, 'gone', 'fake')"
    )
    leftovers = swarm.home / "tasks" / "ghost"
    leftovers.mkdir(parents=True)
    (leftovers / "disk.qcow2").write_bytes(b"half")
    r = swarm("doctor", "--fix", check=False)
    assert r.returncode == 0 and "[fixed] task ghost: interrupted" in r.stdout, r.stdout
    assert not leftovers.exists()
    assert swarm.db("SELECT * FROM journal") == []
