"""Warm templates and warm clones (issue 10) through the real CLI against the fake provider:
`project stop --warm` / `project warm` save the newest generation running, `create` resumes a
task from it (a private mapping of the template's RAM, a new identity pushed through the guest
agent with its secrets on stdin), falls back to a cold boot with a one-line notice when it
cannot, and a crash while saving one is settled by `doctor --fix`.

The fake provider checks what QEMU would refuse (a clone that is not waiting for a state, a
RAM file mapped shared by a clone, another machine type, MAC or shape than the saved state's)
and records what the guest agent did (tests/fakes/provider.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workflow_support import GEN_MODE, Swarm, assert_consistent, seeded

from fakes.provider import DEFAULT_MACHINE, EMULATOR_ENV, FAIL_ENV, MACHINES_ENV, RAM_MARK

P = "p"
WARM_STEPS = ["begin", "booted", "saved", "renamed"]
WARM_FILES = {"cidata.iso", "disk.qcow2", "ram", "state", "warm.json"}


# ---- helpers ----
def warm_dir(s: Swarm, n: int = 1) -> Path:
    return s.home / "projects" / P / f"gen-{n}.warm"


def warm_dirs(s: Swarm) -> list[str]:
    """Every warm template directory of the project, finished or not."""
    d = s.home / "projects" / P
    return sorted(x.name for x in d.glob("gen-*.warm*")) if d.is_dir() else []


def memory_image(s: Swarm, n: int = 1) -> str | None:
    rows = s.db("SELECT memory_image FROM generations WHERE project = ? AND generation = ?", (P, n))
    return rows[0][0] if rows else None


def warm_from(s: Swarm, task: str) -> str:
    (row,) = s.db("SELECT warm_from FROM tasks WHERE name = ?", (task,))
    return row[0]  # type: ignore[no-any-return]


def meta(s: Swarm) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((warm_dir(s) / "warm.json").read_text())
    return data


def template_vms(s: Swarm) -> set[tuple[str, str]]:
    return {vm for vm in s.fake_vms() if vm[0] not in ("project", "task")}


def cold_notices(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "cold boot" in ln]


def backing(path: Path) -> str | None:
    from agent_swarm import native

    return native.image_info(path, chain=False).backing_path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamps(d: Path) -> dict[str, tuple[int, int, int]]:
    return {
        f.name: (f.stat().st_size, f.stat().st_mtime_ns, f.stat().st_mode & 0o777)
        for f in sorted(d.iterdir())
    }


def assert_resumed(s: Swarm, task: str) -> dict[str, Any]:
    """``task`` resumed from the project's warm template, as the fake saw it, and took its own
    identity (the one the registry pins) through the guest agent."""
    w = warm_dir(s)
    m = meta(s)
    st = s.vm_state("task", task)
    assert st is not None and st["state"] == "running"
    assert (st["boots"], st.get("resumes")) == (0, 1), "booted instead of resumed"
    assert st["resumed_from"] == str(w / "state")
    # It waited for the state and mapped the template's RAM privately, as the template ran.
    rs = st["resumed_spec"]
    assert rs["incoming"] is True and rs["memory_shared"] is False
    assert rs["memory_file"] == str(w / "ram")
    assert (rs["mac"], rs["machine"]) == (m["mac"], DEFAULT_MACHINE)
    # Then redefined as an ordinary VM (its next start is a boot), keeping MAC, machine and
    # the template's RAM file mapped privately (one RAM layout on every boot: forks need it).
    spec = st["spec"]
    assert (spec["incoming"], spec["memory_file"], spec["memory_shared"]) == (
        False,
        str(w / "ram"),
        False,
    )
    assert (spec["mac"], spec["machine"]) == (m["mac"], DEFAULT_MACHINE)
    assert backing(Path(spec["disk"])) == str(w / "disk.qcow2")
    # The identity: inherited from the template, then replaced by the clone's own.
    assert st["inherited"]["hostname"] == f"{P}.1"
    assert st["hostname"] == task
    assert re.fullmatch(r"[0-9a-f]{32}", st["machine_id"])
    assert st["machine_id"] != st["inherited"]["machine_id"]
    (row,) = s.db("SELECT host_key, warm_from FROM tasks WHERE name = ?", (task,))
    assert st["host_pub"] == row["host_key"], "the guest's host key is not the pinned one"
    assert row["warm_from"] == str(w)
    assert st["identity_pushes"] == 1 and st["rng_reseeded"] == 1
    assert abs(st["clock"] - time.time()) < 600, "the clone kept its template's clock"
    # The private key went to the guest on stdin, never in argv.
    assert st["stdin_has_private_key"] is True
    assert st["argv_has_secret"] is False
    return st


def assert_cold(s: Swarm, task: str) -> None:
    st = s.vm_state("task", task)
    assert st is not None and st["state"] == "running"
    assert st["boots"] == 1 and "resumed_from" not in st and "identity_pushes" not in st
    assert st["spec"]["memory_file"] is None and st["spec"]["incoming"] is False
    gen1 = s.home / "projects" / P / "gen-1.qcow2"
    assert backing(Path(st["spec"]["disk"])) == str(gen1)
    assert warm_from(s, task) == ""


def assert_no_warm_leftovers(s: Swarm) -> None:
    assert template_vms(s) == set(), "the template VM is still in the hypervisor"
    assert warm_dirs(s) == [], "warm template files are left"
    assert memory_image(s) is None
    assert s.db("SELECT * FROM journal") == []


def roomy(s: Swarm) -> None:
    """No capacity refusals: these tests run more fake VMs than a small host has CPUs."""
    s.home.mkdir(mode=0o700, exist_ok=True)
    (s.home / "config.toml").write_text("[capacity]\ncpu_ratio = 64.0\nmemory_ratio = 64.0\n")


def warmed(make_swarm: Any, base_image: Path, tag: str, **kw: str) -> Swarm:
    """A project sealed into generation 1 and made warm through the core API (the CLI flow is
    the first test's)."""
    s: Swarm = make_swarm(tag, **kw)
    roomy(s)
    seeded(s, base_image, project=P, bystander=None)
    with s.core() as core:
        core.warm.make(P)
    assert warm_dirs(s) == ["gen-1.warm"]
    return s


# ---- the flow ----
def test_warm_template_clones_fallbacks_and_drop(make_swarm, base_image: Path) -> None:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("warm-flow")
    roomy(s)
    s("init-base", "--image", str(base_image), "--name", "tiny")
    s("project", "create", P, "--disk", "1G", "--memory", "512M", "--cpus", "1")

    # -- `project stop --warm`: seals generation 1 and saves it running, read-only
    r = s("project", "stop", P, "--warm")
    assert "sealed template generation 1; tasks resume from its warm template." in r.stdout
    w = warm_dir(s)
    assert warm_dirs(s) == ["gen-1.warm"]
    assert {f.name for f in w.iterdir()} == WARM_FILES
    for f in w.iterdir():
        assert f.stat().st_mode & 0o777 == GEN_MODE, f
    assert memory_image(s) == str(w)
    assert template_vms(s) == set(), "the template VM was not removed after the save"
    m = meta(s)
    assert (m["project"], m["generation"], m["provider"]) == (P, 1, "fake")
    assert (m["cpus"], m["memory_mib"], m["network"]) == (1, 512, "user")
    assert m["fingerprint"]["emulator"] == "fake 1"
    assert m["fingerprint"]["machine"] == DEFAULT_MACHINE
    assert backing(w / "disk.qcow2") == str(s.home / "projects" / P / "gen-1.qcow2")
    ram = (w / "ram").read_bytes()[:64]
    assert ram.startswith(RAM_MARK + f"{P}.1".encode()), "the template's RAM was not saved"
    assert (w / "ram").stat().st_size == 512 << 20
    assert_consistent(s)

    # -- a second `project warm` keeps it
    before = stamps(w)
    r = s("project", "warm", P)
    assert "generation 1 is already warm" in r.stderr
    assert stamps(w) == before

    # -- `create` resumes from it, each clone with its own identity
    r = s("--json", "create", P, "t1")
    assert json.loads(r.stdout)["warm_from"] == str(w)
    assert "resuming the warm template" in r.stderr and cold_notices(r.stderr) == []
    t1 = assert_resumed(s, "t1")
    r = s("create", P, "t2")
    assert "resumed from the warm template of p generation 1" in r.stdout
    t2 = assert_resumed(s, "t2")
    assert t1["machine_id"] != t2["machine_id"]
    assert t1["host_pub"] != t2["host_pub"]
    assert t1["inherited"] == t2["inherited"]  # the same template underneath
    # The template's files are as saved (the clones mapped its RAM privately).
    for key in ("state", "ram", "disk"):
        f = w / ("disk.qcow2" if key == "disk" else key)
        assert sha(f) == m[f"{key}_sha256"], f"the template's {key} changed"
    assert stamps(w) == before

    # -- a warm clone's next start is an ordinary boot (the fake refuses to boot an
    #    incoming-defined VM)
    s("stop", "t1")
    s("start", "t1")
    st = s.vm_state("task", "t1")
    assert (st["state"], st["boots"], st["resumes"]) == ("running", 1, 1)

    # -- `status --json` shows the template and its clones (when the core reports it)
    status = s.json("status")
    (proj,) = [x for x in status["projects"] if x["name"] == P]
    gens = {g["generation"]: g for g in proj.get("generations", [])}
    if gens and "warm" in gens[1]:
        assert gens[1]["warm"]["path"] == str(w)
        assert sorted(gens[1]["warm"]["clones"]) == ["t1", "t2"]

    # -- cold boots: asked for (no notice), or a shape / host the template cannot serve
    r = s("--json", "create", "--cold", P, "c1")
    assert json.loads(r.stdout)["warm_from"] == "" and cold_notices(r.stderr) == []
    assert_cold(s, "c1")
    r = s("create", P, "c2", "--memory", "1G")
    assert cold_notices(r.stderr) == [
        "task c2: cold boot: the warm template has 1 vCPUs and 512 MiB, "
        "this task 1 vCPUs and 1024 MiB"
    ]
    assert "clone of p generation 1" in r.stdout
    assert_cold(s, "c2")
    r = s("create", P, "c3", "--cpus", "2")
    (line,) = cold_notices(r.stderr)
    assert "1 vCPUs" in line and "2 vCPUs" in line, line
    assert_cold(s, "c3")
    r = s("create", P, "c4", env={EMULATOR_ENV: "fake 2"})
    assert cold_notices(r.stderr) == [
        "task c4: cold boot: this host changed since the warm template was saved (emulator)"
    ]
    assert_cold(s, "c4")
    r = s("create", P, "c5", env={MACHINES_ENV: "fake-machine-2"})
    (line,) = cold_notices(r.stderr)
    assert line.endswith("(machine)"), line
    assert_cold(s, "c5")

    # -- bulk create resumes each
    r = s("bulk", "create", P, "a", "b")
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.split()}
    for n in ("a", "b"):
        assert "ready (warm)" in rows[n], r.stdout
        assert_resumed(s, n)
    assert_consistent(s)

    # -- dropping it is refused while clones use it: one clear line, nothing removed
    r = s("project", "warm", P, "--drop", check=False)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "used by tasks" in errors[0], r.stderr
    assert stamps(w) == before and memory_image(s) == str(w)
    assert s.vm_state("task", "t1")["state"] == "running"

    # -- and works once they are gone; tasks then boot cold without a notice
    s("bulk", "delete", "t1", "t2", "a", "b")
    r = s("project", "warm", P, "--drop")
    assert "Removed the warm template of p." in r.stdout
    assert_no_warm_leftovers(s)
    r = s("create", P, "c6")
    assert cold_notices(r.stderr) == []
    assert_cold(s, "c6")
    r = s("project", "warm", P, "--drop")
    assert "has no warm template" in r.stdout

    # -- `project warm` makes it again; a new clone resumes from it
    r = s("project", "warm", P)
    assert "generation 1 is warm" in r.stdout
    assert memory_image(s) == str(w) and {f.name for f in w.iterdir()} == WARM_FILES
    s("create", P, "t3")
    assert_resumed(s, "t3")
    assert_consistent(s)


# ---- a clone that fails is removed entirely ----
@pytest.fixture(scope="module")
def warm_swarm(make_swarm, base_image: Path) -> Iterator[Swarm]:  # type: ignore[no-untyped-def]
    yield warmed(make_swarm, base_image, "warm-fail")


@pytest.mark.parametrize(
    ("fail", "message"),
    [
        ("identity", "the clone did not take its new identity"),
        ("resume", "injected failure: resume"),
    ],
)
def test_a_failed_warm_clone_leaves_nothing(warm_swarm: Swarm, fail: str, message: str) -> None:
    s = warm_swarm
    w = warm_dir(s)
    before = stamps(w)
    name = f"bad-{fail}"
    r = s("create", P, name, check=False, env={FAIL_ENV: f"{fail}:{name}"})
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert name not in s.names("tasks")
    assert s.vm_state("task", name) is None
    assert not (s.home / "tasks" / name).exists()
    assert s.db("SELECT * FROM ports WHERE owner_name = ?", (name,)) == []
    assert stamps(w) == before and memory_image(s) == str(w)
    assert_consistent(s)
    # The name is free, and the next clone (without the failure) resumes.
    s("create", P, name)
    assert_resumed(s, name)
    s("delete", name)


def test_a_touched_template_is_not_resumed_from(warm_swarm: Swarm) -> None:
    s = warm_swarm
    state = warm_dir(s) / "state"
    st = state.stat()
    os.utime(state, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        r = s("create", P, "after-touch")
        assert cold_notices(r.stderr) == [
            "task after-touch: cold boot: the warm template's state file changed since it "
            "was saved (`agent-swarm doctor` checks it)"
        ]
        assert_cold(s, "after-touch")
    finally:
        os.utime(state, ns=(st.st_atime_ns, st.st_mtime_ns))
    s("delete", "after-touch")
    s("create", P, "after-untouch")
    assert_resumed(s, "after-untouch")
    s("delete", "after-untouch")


# ---- making one fails cleanly ----
def test_no_guest_agent_no_warm_template(make_swarm, base_image: Path) -> None:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("warm-noagent")
    seeded(s, base_image, project=P, bystander=None)
    r = s("project", "warm", P, check=False, env={FAIL_ENV: f"agent:{P}.1"})
    assert r.returncode != 0
    assert "guest agent does not answer" in r.stderr and "qemu-guest-agent" in r.stderr
    assert_no_warm_leftovers(s)
    assert_consistent(s)
    r = s("create", P, "t1")
    assert cold_notices(r.stderr) == []
    assert_cold(s, "t1")


def test_without_the_capability(make_swarm, base_image: Path) -> None:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("warm-nocap", caps="warm_clones=0")
    seeded(s, base_image, project=P, bystander=None)
    r = s("project", "warm", P, check=False)
    assert r.returncode != 0 and "warm" in r.stderr, r.stderr
    r = s("project", "stop", P, "--warm", check=False)
    assert r.returncode != 0 and "warm" in r.stderr, r.stderr
    assert_no_warm_leftovers(s)
    r = s("create", P, "t1")
    assert cold_notices(r.stderr) == []
    assert_cold(s, "t1")
    assert_consistent(s)


def test_a_project_without_a_generation(make_swarm, base_image: Path) -> None:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("warm-nogen")
    with s.core() as core:
        core.images.register("tiny", str(base_image))
        core.projects.create(P, cpus=1, memory_mib=512, disk_gib=1, start=False)
    r = s("project", "warm", P, check=False)
    assert r.returncode != 0 and "has no template yet" in r.stderr, r.stderr
    assert_no_warm_leftovers(s)


# ---- kill -9 while saving one ----
def test_the_steps_here_are_the_operations_steps() -> None:
    """A step added to the warm operation must be crash-tested here too."""
    from agent_swarm.ops.warm import WarmOp

    assert list(WarmOp.steps) == WARM_STEPS


@pytest.fixture(scope="module")
def crash_swarm(make_swarm, base_image: Path) -> Iterator[Swarm]:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("warm-crash")
    seeded(s, base_image, project=P, bystander="bystander")
    yield s


@pytest.mark.parametrize("step", WARM_STEPS)
def test_kill_during_warm(crash_swarm: Swarm, step: str) -> None:
    s = crash_swarm
    by = s.vm_state("task", "bystander")
    s.crash(f"warm:{step}", "project", "warm", P)
    if step in ("booted", "saved"):
        assert warm_dirs(s) == ["gen-1.warm.tmp"]
    if step == "booted":
        assert template_vms(s) == {("warm", f"{P}.1")}, "the template VM should be running"
    if step == "renamed":
        assert warm_dirs(s) == ["gen-1.warm"]  # in place, but not recorded
    assert memory_image(s) is None

    r = s("doctor", check=False)
    assert r.returncode == 1, r.stdout
    assert f"[PROBLEM] project {P}: interrupted: warm interrupted" in r.stdout, r.stdout
    r = s("doctor", "--fix", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"[fixed] project {P}: interrupted: warm interrupted" in r.stdout, r.stdout
    assert "PROBLEM" not in r.stdout and "fix failed" not in r.stdout, r.stdout
    assert_no_warm_leftovers(s)
    assert s.vm_state("task", "bystander") == by
    assert_consistent(s)

    # A later `project warm` works, and a task resumes from it.
    s("project", "warm", P)
    assert warm_dirs(s) == ["gen-1.warm"] and memory_image(s) == str(warm_dir(s))
    child = f"w-{step}"
    s("create", P, child)
    assert_resumed(s, child)
    s("delete", child)
    s("project", "warm", P, "--drop")
    assert_no_warm_leftovers(s)


def test_an_unfinished_template_without_its_journal_entry(crash_swarm: Swarm) -> None:
    """A hand-edited host: the template VM and its files with no journal entry to settle
    them are still found by doctor and removed by --fix (and nothing else is touched)."""
    s = crash_swarm
    by = s.vm_state("task", "bystander")
    s.crash("warm:booted", "project", "warm", P)
    s.execute("DELETE FROM journal")
    assert template_vms(s) == {("warm", f"{P}.1")} and warm_dirs(s) == ["gen-1.warm.tmp"]
    r = s("doctor", check=False)
    assert r.returncode == 1 and "gen-1.warm.tmp" in r.stdout, r.stdout
    r = s("doctor", "--fix", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PROBLEM" not in r.stdout and "fix failed" not in r.stdout, r.stdout
    assert_no_warm_leftovers(s)
    assert s.vm_state("task", "bystander") == by
    assert_consistent(s)


def test_seal_warm_from_the_config_and_its_overrides(make_swarm, base_image: Path) -> None:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("warm-config")
    s.home.mkdir(mode=0o700, exist_ok=True)
    cfg = "[capacity]\ncpu_ratio = 64.0\nmemory_ratio = 64.0\n[seal]\nwarm = true\n"
    (s.home / "config.toml").write_text(cfg)
    s("init-base", "--image", str(base_image), "--name", "tiny")
    s("project", "create", P, "--disk", "1G", "--memory", "512M", "--cpus", "1")
    # [seal] warm = true: a plain `project stop` saves a warm template too
    r = s("project", "stop", P)
    assert "tasks resume from its warm template" in r.stdout
    assert memory_image(s) == str(warm_dir(s))
    # --warm with --no-seal: a one-line error, nothing sealed
    r = s("project", "stop", P, "--warm", "--no-seal", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--no-seal" in r.stderr.splitlines()[0]
    # --no-warm overrides the config for one seal (the project ran again meanwhile)
    s("project", "start", P)
    r = s("project", "stop", P, "--no-warm")
    assert "generation 2" in r.stdout and "warm template" not in r.stdout
    assert memory_image(s, 2) is None
    # an unknown key in [seal] is refused, naming it
    (s.home / "config.toml").write_text(cfg + "warmth = 1\n")
    r = s("project", "stop", P, check=False)
    assert r.returncode != 0 and "seal.warmth" in r.stderr.splitlines()[0]
