"""`agent-swarm fork TASK NEW...` (issue 10) through the real CLI against the fake provider: a
running task is paused once, saved with its RAM while each fork's disk is copied, and runs on;
each fork resumes from that one state (defined to wait for it, the warm template's RAM file
mapped privately only when the source runs on it), takes its own identity through the guest
agent and is redefined as an ordinary VM. Failures roll every fork back; a killed fork is
settled by `doctor --fix` (the source resumed, the half-made fork removed).

The fake provider checks what QEMU would refuse (a fork not waiting for a state, a RAM layout
other than the running source's, a state saved without its RAM) and records what happened to
each VM: pauses, saves, the guest's ``memory`` and identity (tests/fakes/provider.py).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workflow_support import (
    Swarm,
    assert_consistent,
    fingerprint,
    qemu_io_read,
    qemu_io_write,
    seeded,
)

from fakes.provider import (
    DEFAULT_MACHINE,
    FAIL_ENV,
    GUEST_WRITE_OFFSET,
    GUEST_WRITE_PATTERN,
    set_vm_state,
)

P = "p"
FORK_STEPS = ["begin", "registered"]


# ---- helpers ----
def roomy(s: Swarm) -> None:
    """No capacity refusals: these tests run more fake VMs than a small host has CPUs."""
    s.home.mkdir(mode=0o700, exist_ok=True)
    (s.home / "config.toml").write_text("[capacity]\ncpu_ratio = 64.0\nmemory_ratio = 64.0\n")


def warm_dir(s: Swarm) -> Path:
    return s.home / "projects" / P / "gen-1.warm"


def row(s: Swarm, task: str) -> Any:
    (r,) = s.db("SELECT * FROM tasks WHERE name = ?", (task,))
    return r


def vm(s: Swarm, task: str, kind: str = "task") -> dict[str, Any]:
    st = s.vm_state(kind, task)
    assert st is not None, f"the fake has no VM for {kind} {task}"
    return st


def counters(s: Swarm, task: str) -> tuple[int, int, int, int]:
    """(pauses, unpauses, saves, boots) of a task's VM."""
    st = vm(s, task)
    return st.get("pauses", 0), st.get("unpauses", 0), st.get("saves", 0), st["boots"]


def errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("Error:")]


def backing(path: Path) -> str | None:
    from agent_swarm import native

    return native.image_info(path, chain=False).backing_path


def reads(image: Path, pattern: int, offset: int) -> bool:
    r = subprocess.run(
        ["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {pattern:#x} {offset} 64k", str(image)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return "Pattern verification failed" not in r.stdout


def stamps(d: Path) -> dict[str, tuple[int, int, int]]:
    return {
        f.name: (f.stat().st_size, f.stat().st_mtime_ns, f.stat().st_mode & 0o777)
        for f in sorted(d.iterdir())
    }


def assert_gone(s: Swarm, *names: str) -> None:
    for n in names:
        assert n not in s.names("tasks"), f"task {n} is still registered"
        assert s.vm_state("task", n) is None, f"the fake still has a VM for {n}"
        assert not (s.home / "tasks" / n).exists(), f"{n}'s directory is left"
        assert s.db("SELECT * FROM ports WHERE owner_name = ?", (n,)) == [], f"{n}'s port"
    assert not list((s.home / "tasks").glob("*/fork.state")), "a saved state is left"


def assert_forked(s: Swarm, source: str, fork: str, *, warm: bool) -> dict[str, Any]:
    """``fork`` resumed from a state of ``source`` with its RAM (its guest's memory and,
    until the push, identity) and runs with its own identity, the one the registry pins."""
    src_row, f_row = row(s, source), row(s, fork)
    assert (f_row["project"], f_row["generation"]) == (src_row["project"], src_row["generation"])
    assert f_row["warm_from"] == src_row["warm_from"] == (str(warm_dir(s)) if warm else "")
    assert (f_row["cpus"], f_row["memory_mib"]) == (src_row["cpus"], src_row["memory_mib"])
    src, st = vm(s, source), vm(s, fork)
    assert st["state"] == "running"
    assert (st["boots"], st["resumes"]) == (0, 1), "booted instead of resumed"
    assert st["resumed_shared_memory"] is False, "not resumed from a state with its RAM"
    rs = st["resumed_spec"]
    assert rs["incoming"] is True and rs["memory_shared"] is False
    if warm:  # the source runs on the template's RAM file: the fork maps it too, privately
        meta = json.loads((warm_dir(s) / "warm.json").read_text())
        assert rs["memory_file"] == str(warm_dir(s) / "ram")
        assert (rs["mac"], rs["machine"]) == (meta["mac"], DEFAULT_MACHINE)
    else:
        assert rs["memory_file"] is None, "a cold source's fork needs no RAM file"
    # Then redefined as an ordinary VM: its next start is a boot (a fork of a warm clone
    # keeps the template's RAM file, privately: the same RAM layout on every boot).
    spec = st["spec"]
    assert (spec["incoming"], spec["memory_file"], spec["memory_shared"]) == (
        False,
        rs["memory_file"],
        False,
    )
    # The guest: the source's memory, then its own identity.
    assert st["memory"] == src["memory"] and st["memory"], "the fork lost the source's RAM"
    assert st["inherited"]["hostname"] == src["hostname"]
    assert st["inherited"]["host_pub"] == src["host_pub"]
    assert st["hostname"] == fork
    assert re.fullmatch(r"[0-9a-f]{32}", st["machine_id"])
    assert st["machine_id"] != src["machine_id"]
    assert st["host_pub"] == f_row["host_key"] != src_row["host_key"]
    assert st["identity_pushes"] == 1 and st["rng_reseeded"] == 1
    assert st["stdin_has_private_key"] is True and st["argv_has_secret"] is False
    assert "true" in st["commands"], "fork did not wait for the fork's guest to answer"
    # Its disk: a copy of the source's, on the same parent.
    src_disk, f_disk = Path(src["spec"]["disk"]), Path(spec["disk"])
    assert f_disk.parent == s.home / "tasks" / fork and f_disk.is_file()
    assert backing(f_disk) == backing(src_disk)
    assert not list((s.home / "tasks").glob("*/fork.state")), "the saved state is left"
    # The source runs on, unchanged.
    assert src["state"] == "running" and src["hostname"] == source
    assert src["host_pub"] == src_row["host_key"]
    return st


# ---- fixtures ----
@pytest.fixture(scope="module")
def fs(make_swarm, base_image: Path) -> Iterator[Swarm]:  # type: ignore[no-untyped-def]
    """A project with a warm template, a running cold task ``cold``, a running warm clone
    ``warm`` and a stopped bystander."""
    s: Swarm = make_swarm("fork")
    roomy(s)
    seeded(s, base_image, project=P, bystander="bystander")
    with s.core() as core:
        core.warm.make(P)
        core.tasks.create(P, "cold", cold=True)
        core.tasks.create(P, "warm")
        # A newer generation: a fork is on its source's, not on the newest.
        qemu_io_write(Path(vm(s, P, "project")["spec"]["disk"]), 0x22, "1M")
        assert core.seal.seal(P) == 2
    assert row(s, "cold")["warm_from"] == "" and row(s, "warm")["warm_from"] == str(warm_dir(s))
    assert row(s, "cold")["generation"] == row(s, "warm")["generation"] == 1
    set_vm_state(s.home, "task", "cold", memory={"tmpfs": "cold work"})
    set_vm_state(s.home, "task", "warm", memory={"tmpfs": "warm work"})
    yield s


def test_the_steps_here_are_the_operations_steps() -> None:
    """A step added to the fork operation must be crash-tested here too."""
    from agent_swarm.ops.fork import ForkOp

    assert list(ForkOp.steps) == FORK_STEPS


# ---- forks ----
def test_fork_a_running_cold_task(fs: Swarm) -> None:
    s = fs
    src_disk = Path(vm(s, "cold")["spec"]["disk"])
    qemu_io_write(src_disk, 0x33, "2M")  # what the task wrote before the fork
    set_vm_state(s.home, "task", "cold", writes_disk=True)  # and writes when it runs again
    before = counters(s, "cold")
    by = fingerprint(s, "bystander")
    try:
        r = s("fork", "cold", "c1")
    finally:
        set_vm_state(s.home, "task", "cold", writes_disk=False)
    assert "Forked cold into c1: `agent-swarm ssh c1`." in r.stdout
    assert "task cold: pausing to save its memory and disk" in r.stderr
    assert re.search(r"task cold: running again \(paused \d+\.\d\d s; \d+ MiB saved\)", r.stderr)
    assert "task c1: forked from cold in" in r.stderr
    st = assert_forked(s, "cold", "c1", warm=False)
    assert st["memory"] == {"tmpfs": "cold work"}
    assert st["inherited"]["hostname"] == "cold"
    # The disk: what the source wrote before, not what it wrote after running on.
    f_disk = Path(st["spec"]["disk"])
    qemu_io_read(f_disk, 0x33, "2M")
    qemu_io_read(f_disk, 0x11, "0")  # the generation underneath
    assert vm(s, "cold")["disk_writes"] >= 1
    assert reads(src_disk, GUEST_WRITE_PATTERN, GUEST_WRITE_OFFSET)
    assert reads(f_disk, 0, GUEST_WRITE_OFFSET), "the disk was copied after the source ran on"
    # Paused exactly once, running again, not rebooted, its RAM kept.
    p, u, sv, b = before
    assert counters(s, "cold") == (p + 1, u + 1, sv + 1, b)
    src = vm(s, "cold")
    assert src["saved_shared_memory"][-1] is False and src["memory"] == {"tmpfs": "cold work"}
    assert src.get("while_paused_ran") == src["pauses"], "the disks were not copied while paused"
    assert fingerprint(s, "bystander") == by
    assert_consistent(s)
    # A fork's next start is an ordinary boot.
    s("stop", "c1")
    s("start", "c1")
    st = vm(s, "c1")
    assert (st["state"], st["boots"], st["resumes"], st["memory"]) == ("running", 1, 1, {})


def test_fork_a_warm_clone_json(fs: Swarm) -> None:
    s = fs
    before = counters(s, "warm")
    tmpl = stamps(warm_dir(s))
    out = s.json("fork", "warm", "w1")
    assert isinstance(out, list) and len(out) == 1
    (f,) = out
    assert (f["name"], f["forked_from"], f["host_key"]) == ("w1", "warm", None)
    assert (f["project"], f["generation"], f["warm_from"]) == (P, 1, str(warm_dir(s)))
    st = assert_forked(s, "warm", "w1", warm=True)
    # Its RAM came from the source's state, not from the template's RAM file it mapped.
    assert st["memory"] == {"tmpfs": "warm work"}
    assert st["inherited"]["hostname"] == "warm"
    meta = json.loads((warm_dir(s) / "warm.json").read_text())
    assert st["spec"]["mac"] == meta["mac"]  # kept for its later boots
    assert backing(Path(st["spec"]["disk"])) == str(warm_dir(s) / "disk.qcow2")
    p, u, sv, b = before
    assert counters(s, "warm") == (p + 1, u + 1, sv + 1, b)
    assert stamps(warm_dir(s)) == tmpl, "the warm template changed"
    # A fork of that fork (it runs on the template's RAM file as well).
    s("fork", "w1", "w1a")
    assert_forked(s, "w1", "w1a", warm=True)
    assert vm(s, "w1a")["memory"] == {"tmpfs": "warm work"}
    assert_consistent(s)


def test_two_forks_from_one_save(fs: Swarm) -> None:
    s = fs
    before = counters(s, "cold")
    r = s("fork", "cold", "x", "y")
    assert "Forked cold into x, y" in r.stdout
    a, b = assert_forked(s, "cold", "x", warm=False), assert_forked(s, "cold", "y", warm=False)
    assert a["resumed_from"] == b["resumed_from"], "not resumed from the one saved state"
    assert a["machine_id"] != b["machine_id"] and a["host_pub"] != b["host_pub"]
    p, u, sv, bt = before
    assert counters(s, "cold") == (p + 1, u + 1, sv + 1, bt), "the source was saved twice"
    assert_consistent(s)


# ---- refused: nothing created ----
def test_fork_of_a_stopped_task(fs: Swarm) -> None:
    s = fs
    tasks, vms = s.names("tasks"), s.fake_vms()
    by = fingerprint(s, "bystander")
    r = s("fork", "bystander", "nope", check=False)
    assert r.returncode != 0
    assert errors(r.stderr) == [
        "Error: task 'bystander' is stopped: fork branches a running task"
    ], r.stderr
    assert "Hint: start it: `agent-swarm start bystander`" in r.stderr
    assert_gone(s, "nope")
    assert (s.names("tasks"), s.fake_vms()) == (tasks, vms)
    assert fingerprint(s, "bystander") == by
    assert_consistent(s)


@pytest.mark.parametrize(
    ("new", "message"),
    [
        (["bystander"], "bystander"),
        (["fresh", "bystander"], "bystander"),
        (["cold"], "a fork needs a new name, not 'cold'"),
        (["Bad Name"], "task name"),
    ],
    ids=["taken", "fresh-then-taken", "itself", "bad-name"],
)
def test_fork_to_a_taken_or_bad_name(fs: Swarm, new: list[str], message: str) -> None:
    s = fs
    before = counters(s, "cold")
    by = fingerprint(s, "bystander")
    tasks, vms = s.names("tasks"), s.fake_vms()
    r = s("fork", "cold", *new, check=False)
    assert r.returncode != 0
    (line,) = errors(r.stderr)
    assert message in line, r.stderr
    assert_gone(s, *(n for n in new if n not in ("bystander", "cold")))
    assert (s.names("tasks"), s.fake_vms()) == (tasks, vms)
    assert fingerprint(s, "bystander") == by
    assert counters(s, "cold") == before, "the source was paused for nothing"
    assert vm(s, "cold")["state"] == "running"
    assert_consistent(s)


# ---- failures: every fork rolled back ----
@pytest.mark.parametrize(
    ("fail", "message"),
    [
        ("resume", "injected failure: resume"),
        ("identity", "did not take its new identity"),
        ("define", "injected failure: define"),
    ],
    ids=["resume", "identity", "define"],
)
def test_a_failing_second_fork_rolls_both_back(fs: Swarm, fail: str, message: str) -> None:
    s = fs
    first, second = f"ok-{fail}", f"bad-{fail}"
    before = counters(s, "cold")
    by = fingerprint(s, "bystander")
    r = s("fork", "cold", first, second, check=False, env={FAIL_ENV: f"{fail}:{second}"})
    assert r.returncode != 0
    (line,) = errors(r.stderr)
    assert message in line, r.stderr
    assert f"task {first}: forked from cold" in r.stderr  # the first one had been made
    assert_gone(s, first, second)
    p, u, sv, b = before
    assert counters(s, "cold") == (p + 1, u + 1, sv + 1, b)
    assert vm(s, "cold")["state"] == "running"
    assert fingerprint(s, "bystander") == by
    assert_consistent(s)
    # The names are free again.
    s("fork", "cold", first, second)
    assert_forked(s, "cold", second, warm=False)
    s("bulk", "delete", first, second)


def test_a_failing_save_creates_nothing(fs: Swarm) -> None:
    s = fs
    before = counters(s, "cold")
    r = s("fork", "cold", "s1", "s2", check=False, env={FAIL_ENV: "save:cold"})
    assert r.returncode != 0
    (line,) = errors(r.stderr)
    assert "injected failure: save" in line, r.stderr
    assert_gone(s, "s1", "s2")
    assert counters(s, "cold") == before and vm(s, "cold")["state"] == "running"
    assert_consistent(s)


def test_a_source_the_hypervisor_left_paused(fs: Swarm) -> None:
    """The save fails and the hypervisor does not resume the source: the forks are rolled
    back and `start` resumes it (not a boot: its RAM is kept)."""
    s = fs
    _p, _u, _sv, boots = counters(s, "cold")
    r = s("fork", "cold", "k1", check=False, env={FAIL_ENV: "save-stuck:cold"})
    assert r.returncode != 0
    (line,) = errors(r.stderr)
    assert "left paused" in line, r.stderr
    assert_gone(s, "k1")
    assert vm(s, "cold")["state"] == "paused"
    assert s.views()["cold"].state == "paused"
    s("start", "cold")
    src = vm(s, "cold")
    assert (src["state"], src["boots"], src["memory"]) == ("running", boots, {"tmpfs": "cold work"})
    assert_consistent(s)


# ---- kill -9 during a fork ----
def interrupted_forks(s: Swarm, source: str) -> list[str]:
    """The forks `doctor` (the CLI, exit 1) reports as interrupted, with their fix."""
    r = s("doctor", check=False)
    assert r.returncode == 1, r.stdout
    lines = r.stdout.splitlines()
    found = []
    for i, ln in enumerate(lines):
        m = re.match(r"\[PROBLEM\] task (\S+): interrupted: fork interrupted at step ", ln)
        if m:
            assert ln.endswith(f"(a fork of task {source})"), ln
            assert lines[i + 1].strip() == (
                "--fix will: make sure the source runs; remove the half-made fork"
            ), r.stdout
            found.append(m.group(1))
    return sorted(found)


@pytest.mark.parametrize("how", [*FORK_STEPS, "paused"])
def test_kill_during_fork(fs: Swarm, how: str) -> None:
    s = fs
    names = [f"kf-{how}-1", f"kf-{how}-2"]
    by = fingerprint(s, "bystander")
    p, _u, _sv, boots = counters(s, "cold")
    if how == "paused":  # killed while the source is paused, both disks copied
        r = s("fork", "cold", *names, check=False, env={FAIL_ENV: "save-crash:cold"})
        assert r.returncode == -signal.SIGKILL, r.stderr
        assert vm(s, "cold")["state"] == "paused"
        assert counters(s, "cold")[0] == p + 1
        for n in names:
            assert (s.home / "tasks" / n / "disk.qcow2").is_file()
        assert s.views()["cold"].state == "paused"
        reported = names
    else:
        s.crash(f"fork:{how}", "fork", "cold", *names)
        assert vm(s, "cold")["state"] == "running" and counters(s, "cold")[0] == p
        reported = names[:1]  # killed while registering the first
    assert interrupted_forks(s, "cold") == reported
    view = s.views()[names[0]]
    assert view.state == "broken" and "doctor --fix" in (view.reason or ""), view
    r = s("doctor", "--fix", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    for n in reported:
        assert f"[fixed] task {n}: interrupted: fork interrupted" in r.stdout, r.stdout
    assert "PROBLEM" not in r.stdout and "fix failed" not in r.stdout, r.stdout
    assert_gone(s, *names)
    src = vm(s, "cold")
    assert src["state"] == "running", "doctor --fix did not resume the source"
    assert (src["boots"], src["memory"]) == (boots, {"tmpfs": "cold work"}), "rebooted"
    assert fingerprint(s, "bystander") == by
    assert_consistent(s)
    # The fork can be made afterwards.
    s("fork", "cold", names[0])
    assert_forked(s, "cold", names[0], warm=False)
    s("delete", names[0])


# ---- providers without it ----
def test_without_the_capability(make_swarm, base_image: Path) -> None:  # type: ignore[no-untyped-def]
    s: Swarm = make_swarm("fork-nocap", caps="warm_clones=0")
    seeded(s, base_image, project=P, bystander=None)
    with s.core() as core:
        core.tasks.create(P, "t1")
    before = counters(s, "t1")
    r = s("fork", "t1", "f1", check=False)
    assert r.returncode != 0
    assert errors(r.stderr) == ["Error: the fake provider does not support fork"], r.stderr
    assert_gone(s, "f1")
    assert counters(s, "t1") == before and vm(s, "t1")["state"] == "running"
    r = s("--json", "fork", "t1", "f1", check=False)
    assert r.returncode != 0 and r.stdout == ""
    assert json.loads(r.stderr)["error"] == "the fake provider does not support fork"
    assert_consistent(s)


def test_fork_of_a_restarted_warm_clone(fs: Swarm) -> None:
    s = fs
    s("stop", "warm")
    s("start", "warm")  # a boot: still on the template's RAM file, mapped privately
    set_vm_state(s.home, "task", "warm", memory={"tmpfs": "after a reboot"})
    try:
        r = s("fork", "warm", "rw1", check=False)
        assert r.returncode == 0, r.stderr
        st = vm(s, "rw1")
        # a resumed task keeps mapping the template's RAM file after a reboot too (one RAM
        # layout), so its forks do as well
        assert st["resumed_spec"]["memory_file"] == str(warm_dir(s) / "ram")
        assert st["memory"] == {"tmpfs": "after a reboot"}
    finally:
        if "rw1" in s.names("tasks"):
            s("delete", "rw1")
        assert_gone(s, "rw1")
        assert_consistent(s)
