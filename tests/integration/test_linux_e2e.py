"""End to end on the real Linux provider: libvirtd, QEMU (KVM or TCG), real guests.

One flow, as a user runs it (each step a real `agent-swarm` process):
base image (built locally, cached) -> project -> marker -> seal -> two tasks in parallel ->
isolation and identity checks -> project modified after the seal (tasks unaffected) ->
checkpoint/restore of a running task -> qemu-img check of every image -> a second generation
and gc of the first -> delete everything.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from tests_support import Swarm, domains_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def qemu_img_check(path: Path) -> None:
    r = subprocess.run(["qemu-img", "check", "-U", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, f"qemu-img check {path}: {r.stdout} {r.stderr}"


def backing_chain(path: Path) -> list[str]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [i["filename"] for i in json.loads(out)]


def test_full_flow(swarm: Swarm) -> None:
    home = swarm.home
    # -- base image: built from Debian packages (or taken from the recipe-hash cache)
    swarm("init-base", "--build", "debian-12", timeout=1200)
    bases = swarm.json("init-base", "--list")
    assert [b["name"] for b in bases] == ["debian-12"]

    # -- project: boots, runs setup.sh, answers SSH with its pinned host key
    swarm("project", "create", "myapp", "--memory", "1G", "--cpus", "2")
    assert (home / "setup.sh").exists()
    assert "agent-swarm: project setup done on myapp" in swarm.run(
        "myapp", "sudo cat /var/log/agent-swarm-setup.log", project=True
    )
    swarm.run("myapp", "echo from-template > ~/marker.txt && sync", project=True)

    # -- seal: identity reset + shutdown + read-only generation 1
    out = swarm("project", "stop", "myapp").stdout
    assert "sealed template generation 1" in out
    gen1 = home / "projects/myapp/gen-1.qcow2"
    assert gen1.exists() and (gen1.stat().st_mode & 0o222) == 0

    # -- two tasks, created by two processes at once
    errors: list[BaseException] = []

    def create(name: str) -> None:
        try:
            swarm("create", "myapp", name)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(n,)) for n in ("task-a", "task-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    listed = {v["name"]: v for v in swarm.json("list")}
    assert set(listed) == {"task-a", "task-b"}
    for v in listed.values():
        assert v["state"] == "running" and v["generation"] == 1 and v["project"] == "myapp"
        assert v["ssh"].startswith("127.0.0.1:")
        assert 0 < v["disk_bytes"] < 512 << 20  # an overlay: only what the clone wrote
    assert listed["task-a"]["ssh"] != listed["task-b"]["ssh"]
    for t in ("task-a", "task-b"):
        assert backing_chain(home / f"tasks/{t}/disk.qcow2")[1] == str(gen1)

    # -- both see the template's data; writes stay in their own VM
    for t in ("task-a", "task-b"):
        assert swarm.run(t, "cat ~/marker.txt").strip() == "from-template"
    swarm.run("task-a", "echo only-a > ~/a.txt && sync")
    assert swarm("run", "task-b", "test -e ~/a.txt", check=False).returncode == 1
    assert swarm.run("task-a", "cat ~/a.txt").strip() == "only-a"

    # -- each clone is a new machine
    ident = "hostname; cat /etc/machine-id; sudo cat /etc/ssh/ssh_host_ed25519_key.pub"
    ids = {t: swarm.run(t, ident).split("\n") for t in ("task-a", "task-b")}
    assert ids["task-a"][0] == "task-a" and ids["task-b"][0] == "task-b"
    assert ids["task-a"][1] != ids["task-b"][1]
    assert len(ids["task-a"][1].strip()) == 32
    assert ids["task-a"][2].split()[1] != ids["task-b"][2].split()[1]
    # ...and its host key is the one agent-swarm pinned before it booted.
    import sqlite3

    con = sqlite3.connect(home / "registry.db")
    pinned = dict(con.execute("SELECT name, host_key FROM tasks").fetchall())
    con.close()
    for t in ("task-a", "task-b"):
        assert ids[t][2].split()[1] == pinned[t].split()[1]

    # -- the project runs again and changes: the tasks never see it
    swarm("project", "start", "myapp")
    swarm.run(
        "myapp", "echo changed > ~/marker.txt && echo new > ~/project-only && sync", project=True
    )
    for t in ("task-a", "task-b"):
        assert swarm.run(t, "cat ~/marker.txt; test -e ~/project-only || echo absent").split() == [
            "from-template",
            "absent",
        ]
    swarm("project", "stop", "myapp", "--no-seal")
    assert not (home / "projects/myapp/gen-2.qcow2").exists()

    # -- checkpoint a running task, change it, restore: the change is gone, VM running
    swarm("checkpoint", "task-a", "before")
    swarm.run("task-a", "echo after-checkpoint > ~/cp.txt && sync")
    cps = swarm.json("checkpoints", "task-a")
    assert [c["name"] for c in cps] == ["before"] and cps[0]["state"] == "running"
    swarm("restore", "task-a", "before")
    state = {v["name"]: v["state"] for v in swarm.json("list")}
    assert state["task-a"] == "running"
    assert swarm.run("task-a", "test -e ~/cp.txt && echo present || echo gone").strip() == "gone"
    assert swarm.run("task-a", "cat ~/a.txt").strip() == "only-a"

    # -- every image is consistent
    swarm("stop", "task-a")
    swarm("stop", "task-b")
    images = [
        home / "base-images/debian-12.qcow2",
        gen1,
        home / "projects/myapp/disk.qcow2",
        home / "tasks/task-a/disk.qcow2",
        home / "tasks/task-b/disk.qcow2",
    ]
    for img in images:
        qemu_img_check(img)

    # -- a second generation; gc then removes the first, which no task uses any more, and
    #    the second (rebased onto the base image) still boots with the project's changes
    swarm("bulk", "delete", "task-a", "task-b")
    swarm("project", "stop", "myapp")  # boots once more for the identity reset, seals gen 2
    gen2 = home / "projects/myapp/gen-2.qcow2"
    assert backing_chain(gen2)[1] == str(gen1)
    plan = swarm.json("gc")
    assert [(i["project"], i["generation"]) for i in plan["would_remove"]] == [("myapp", 1)]
    assert gen1.exists()  # a dry run
    swarm("gc", "--yes")
    assert not gen1.exists()
    assert backing_chain(gen2)[1:] == [str(home / "base-images/debian-12.qcow2")]
    qemu_img_check(gen2)
    assert (gen2.stat().st_mode & 0o777) == 0o444
    swarm("create", "myapp", "task-c", "--memory", "768M", "--cpus", "1")
    assert swarm.run("task-c", "cat ~/marker.txt ~/project-only").split() == ["changed", "new"]
    swarm("delete", "task-c")

    # -- delete everything: no domain, disk, seed ISO or row is left
    r = swarm("project", "delete", "myapp")
    assert r.returncode == 0
    assert domains_of(home) == []
    assert list((home / "tasks").iterdir()) == []
    assert list((home / "projects").iterdir()) == []
    con = sqlite3.connect(home / "registry.db")
    for table in ("projects", "tasks", "generations", "ports"):
        assert con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
    con.close()
