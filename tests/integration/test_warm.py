"""Warm clones and forks on the real Linux provider (issue 10), end to end with real guests.

One flow: a project sealed with a warm template -> two tasks resumed from it at once (each
its own pinned host key, hostname, machine-id, RNG, clock; the template's key refused; both
run commands at the same time) -> the template's files unchanged -> one deleted, the other
runs on -> a task of another RAM size boots cold with a notice -> a running task forked:
the fork has what the source held in tmpfs, and the source runs on -> everything deleted.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests_support import Swarm, domains_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def in_parallel(*calls: tuple) -> list[object]:  # type: ignore[type-arg]
    out: list[object] = [None] * len(calls)

    def one(i: int, fn, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            out[i] = fn(*args)
        except BaseException as exc:  # reported below
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i, *c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o for o in out if isinstance(o, BaseException)]
    assert not errors, errors
    return out


def ensure_base(swarm: Swarm) -> None:
    """The module's tests share one state directory: build (or take from the cache) once."""
    bases = swarm.json("init-base", "--list")
    if not any(b["name"] == "debian-12" for b in bases):  # type: ignore[union-attr,index]
        swarm("init-base", "--build", "debian-12", timeout=1200)


def test_warm_clones_and_fork(swarm: Swarm, monkeypatch: pytest.MonkeyPatch) -> None:
    home = swarm.home
    ensure_base(swarm)
    swarm("project", "create", "wp", "--memory", "1G", "--cpus", "2")
    out = swarm("project", "stop", "wp", "--warm").stdout
    assert "tasks resume from its warm template" in out
    wdir = home / "projects/wp/gen-1.warm"
    meta = json.loads((wdir / "warm.json").read_text())
    files = {n: wdir / n for n in ("ram", "state", "disk.qcow2")}
    for f in files.values():
        assert f.stat().st_mode & 0o222 == 0, f  # read-only
    before = {n: sha256(f) for n, f in files.items()}
    assert before["state"] == meta["state_sha256"] and before["ram"] == meta["ram_sha256"]
    assert files["state"].stat().st_size < 8 << 20  # device state only: RAM stays in the file

    # (clones resume with the clock of the save unless they are given the host's: let it lag)
    time.sleep(6)

    # -- two warm clones at once, each with its own identity
    t0 = time.monotonic()
    created = in_parallel(
        (swarm.json, "create", "wp", "wa"),
        (swarm.json, "create", "wp", "wb"),
    )
    both = time.monotonic() - t0
    for c in created:
        assert isinstance(c, dict) and c["warm_from"] == str(wdir)
    listed = {v["name"]: v for v in swarm.json("list")}  # type: ignore[union-attr]
    assert {listed[n]["state"] for n in ("wa", "wb")} == {"running"}

    probe = (
        "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; "
        "cat /etc/machine-id; cat /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2; "
        "ls /etc/ssh | grep -c ssh_host_; date +%s.%N"
    )
    outs = in_parallel((swarm.run, "wa", probe), (swarm.run, "wb", probe))
    host_now = time.time()
    ids = {}
    for name, o in zip(("wa", "wb"), outs, strict=True):
        rnd, hostname, machine_id, pub, nkeys, clock = str(o).split()
        assert hostname == name
        assert nkeys == "2"  # only its ed25519 pair: the template's other key types are gone
        assert abs(float(clock) - host_now) < 5  # (ssh round trip included)
        ids[name] = (rnd, machine_id, pub)
    assert ids["wa"][0] != ids["wb"][0]  # RNG reseeded each
    assert ids["wa"][1] != ids["wb"][1]  # machine-id
    assert ids["wa"][2] != ids["wb"][2]  # host key
    template_pub = meta["host_key"].split()[1]
    assert template_pub not in (ids["wa"][2], ids["wb"][2])

    # the journal of a clone is readable (journald still writes under the template's
    # machine-id until a reboot; the new ID links to it)
    assert swarm.run("wa", "sudo journalctl -q --no-pager -n 1 | wc -l").strip() == "1"

    # the clock right after a resume (no ssh round trip): within 2 s of the host
    clock = float(swarm.run("wa", "date +%s.%N").strip())
    assert abs(clock - time.time()) < 2.5

    # the template's host key is refused: a client pinning it cannot connect to a clone
    monkeypatch.setenv("AGENT_SWARM_HOME", str(home))
    from agent_swarm.models import SSHEndpoint
    from agent_swarm.ssh import keys
    from agent_swarm.ssh.client import HostKeyMismatch, connect

    port = int(listed["wa"]["ssh"].rsplit(":", 1)[1])
    with pytest.raises(HostKeyMismatch):
        connect(SSHEndpoint("127.0.0.1", port, "worker"), meta["host_key"], keys.client_key_path())
    # ... and the ssh alias of each task pins its own key only
    known = (home / "keys/known_hosts").read_text()
    assert template_pub not in known

    # both run commands at the same time
    outs = in_parallel(
        (swarm.run, "wa", "dd if=/dev/zero of=/tmp/z bs=1M count=20 2>/dev/null; sha256sum /tmp/z"),
        (swarm.run, "wb", "dd if=/dev/zero of=/tmp/z bs=1M count=20 2>/dev/null; sha256sum /tmp/z"),
    )
    assert outs[0] == outs[1]

    # the template is unchanged by its clones; doctor agrees
    assert {n: sha256(f) for n, f in files.items()} == before
    assert "warm" not in swarm("doctor").stdout.lower()

    # deleting one leaves the other running
    swarm("delete", "wa")
    assert swarm.run("wb", "hostname").strip() == "wb"

    # a task of another RAM size boots cold, and says why in one line
    r = swarm("create", "wp", "cold1", "--memory", "768M", "--no-wait")
    notice = [ln for ln in r.stderr.splitlines() if "cold boot" in ln]
    assert len(notice) == 1 and "1024 MiB" in notice[0] and "768 MiB" in notice[0], r.stderr
    cold = {v["name"]: v for v in swarm.json("list")}["cold1"]  # type: ignore[index]
    assert cold["state"] == "running"
    swarm("delete", "cold1")

    # -- fork: the running source's memory (a tmpfs file) and disk, a new identity
    swarm.run("wb", "echo in-memory-$(hostname) > /dev/shm/mark; echo on-disk > ~/d; sync")
    uptime_before = float(swarm.run("wb", "cut -d' ' -f1 /proc/uptime").strip())
    r = swarm("fork", "wb", "wf")
    paused = float(r.stderr.split("paused ")[1].split(" s")[0])
    assert paused < 5, r.stderr
    out = swarm.run("wf", "cat /dev/shm/mark ~/d; hostname; cat /etc/machine-id").split()
    assert out[:3] == ["in-memory-wb", "on-disk", "wf"]
    assert out[3] != ids["wb"][1]
    # the source runs on (same boot: its uptime grew; its tmpfs file is there)
    src = swarm.run("wb", "cat /dev/shm/mark; cut -d' ' -f1 /proc/uptime").split()
    assert src[0] == "in-memory-wb" and float(src[1]) > uptime_before

    # status shows the warm template and who resumed from it
    st = swarm.json("status")
    gen = st["projects"][0]["generations"][0]  # type: ignore[index]
    assert gen["warm"]["clones"] == ["wb", "wf"] and gen["warm"]["memory_mib"] == 1024

    # a reboot of a resumed task is an ordinary boot of its own disk, and cloud-init (its seed
    # has the task's own key and hostname) keeps the identity it was given
    swarm("stop", "wb")
    swarm("start", "wb")  # waits for SSH with wb's pinned key
    out = swarm.run("wb", "hostname; cat /etc/machine-id; cat /dev/shm/mark 2>/dev/null || true")
    assert out.split()[:2] == ["wb", ids["wb"][1]]
    assert "in-memory" not in out  # (it really rebooted)

    # -- the disks are sound; then everything goes
    for t in ("wb", "wf"):
        r2 = subprocess.run(
            ["qemu-img", "check", "-U", str(home / f"tasks/{t}/disk.qcow2")],
            capture_output=True,
            text=True,
        )
        assert r2.returncode == 0, r2.stdout + r2.stderr
    swarm("bulk", "delete", "wb", "wf")
    swarm("project", "warm", "wp", "--drop")
    assert not wdir.exists()
    swarm("project", "delete", "wp")
    assert domains_of(home) == []
    print(f"two warm clones ready in {both:.1f} s; fork paused the source {paused:.2f} s")


def test_kill_while_saving_a_warm_template_then_doctor(swarm: Swarm) -> None:
    """Killed right after the template VM started (real domain and passt): doctor names the
    interrupted `warm`, and --fix removes the domain, its network process and the files."""
    home = swarm.home
    ensure_base(swarm)
    # Never booted, so sealing is instant (no identity reset needed).
    swarm("project", "create", "wk", "--no-start", "--memory", "512M", "--cpus", "1")
    swarm("project", "stop", "wk")
    r = swarm(
        "project", "warm", "wk", check=False, env={"AGENT_SWARM_TEST_CRASH_AT": "warm:booted"}
    )
    assert r.returncode == -9, r.stderr
    left = [d for d in domains_of(home) if "-warm-" in d]
    assert left, "the template VM should be running when the command was killed"
    assert (home / "projects/wk/gen-1.warm.tmp").is_dir()
    report = swarm("doctor", check=False)
    assert "warm interrupted" in report.stdout and "remove the template VM" in report.stdout
    swarm("doctor", "--fix")
    assert [d for d in domains_of(home) if "-warm-" in d] == []
    assert not list((home / "projects/wk").glob("gen-1.warm*"))
    assert "All consistent" in swarm("doctor").stdout
    passts = subprocess.run(["pgrep", "-f", f"passt.*{home}"], capture_output=True, text=True)
    assert passts.stdout.strip() == ""
    swarm("project", "delete", "wk")
