"""Helpers of the workflow tests: the real `agent-swarm` CLI in subprocesses against the fake
provider (tests/fakes/provider.py); no root, no libvirtd, nothing boots.

Every CLI subprocess runs the same ``agent_swarm`` as this process (in a checkout: the source
tree, ``python/`` next to ``tests/``) with the fake registered (``fakes.provider.fake_env``).
Read-only checks between commands (registry rows, files, the fake's per-VM state files, a
doctor diagnosis) run in this process: milliseconds where a CLI start costs a third of a
second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "python"


def _package_root() -> Path | None:
    """Where the `agent_swarm` that this process and every CLI subprocess run comes from.

    One another test module imported already; else one PYTHONPATH names; else the source
    tree (``python/`` beside ``tests/``) when it holds the compiled core (a checkout with
    ``_native*.so`` copied in: the `agent-swarm` entry point would otherwise import the
    installed copy); else None: the installed package."""
    mod = sys.modules.get("agent_swarm")
    if mod is not None and mod.__file__:
        return Path(mod.__file__).resolve().parents[1]
    spec = importlib.util.find_spec("agent_swarm")
    found = Path(spec.origin).resolve().parents[1] if spec and spec.origin else None
    if found is not None and not found.is_relative_to(Path(sys.prefix).resolve()):
        return found
    if list((SRC / "agent_swarm").glob("_native*")):
        return SRC
    return None


PACKAGE_ROOT = _package_root()
for _p in (str(PACKAGE_ROOT) if PACKAGE_ROOT else None, str(TESTS)):
    if _p and _p not in sys.path:
        sys.path.insert(0, _p)

from fakes import provider as fake  # noqa: E402
from tests_support import agent_swarm_cmd  # noqa: E402

GEN_MODE = 0o444


def _pythonpath() -> str:
    """tests/ (for `fakes.provider`), then the package root this process uses (the source
    tree in a development checkout: the `agent-swarm` entry point would otherwise import the
    installed copy), then whatever was there."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    first = [str(TESTS), *([str(PACKAGE_ROOT)] if PACKAGE_ROOT else [])]
    return os.pathsep.join(dict.fromkeys(first + extra))


class Swarm:
    """The real CLI against one state directory, with the fake provider."""

    def __init__(self, home: Path, *, caps: str = "", fail: str = "", pycache: Path | None = None):
        self.home = home
        self.caps = caps
        self.fail = fail
        self.pycache = pycache

    # ---- environment ----
    def env(self, extra: dict[str, str | None] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SWARM_")}
        if self.pycache is not None:
            # Bytecode caching (in a private directory): a CLI start compiles nothing.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        env.update(fake.fake_env(self.home, caps=self.caps, fail=self.fail))
        env["PYTHONPATH"] = _pythonpath()
        for k, v in (extra or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    @contextlib.contextmanager
    def in_process(self) -> Iterator[None]:
        """This process's environment as a CLI subprocess's (for in-process Core checks)."""
        saved = dict(os.environ)
        os.environ.update(self.env())
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    @contextlib.contextmanager
    def core(self) -> Iterator[Any]:
        """An in-process :class:`agent_swarm.core.Core` on this state directory (for setting
        up what a test is not about: milliseconds instead of a CLI start)."""
        from agent_swarm.core import Core

        with self.in_process():
            core = Core.open()
            try:
                yield core
            finally:
                core.close()

    # ---- running the CLI ----
    def __call__(
        self,
        *args: str,
        check: bool = True,
        env: dict[str, str | None] | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [*agent_swarm_cmd(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=self.env(env),
        )
        assert "Traceback" not in r.stderr, f"agent-swarm {' '.join(args)}:\n{r.stderr}"
        if check and r.returncode != 0:
            raise AssertionError(
                f"agent-swarm {' '.join(args)} exited {r.returncode}\n"
                f"stdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}"
            )
        return r

    def json(self, *args: str, env: dict[str, str | None] | None = None) -> Any:
        return json.loads(self("--json", *args, env=env).stdout)

    def crash(self, at: str, *args: str) -> None:
        """Run a command that SIGKILLs itself at journal step ``at`` (``op:step``)."""
        r = subprocess.run(
            [*agent_swarm_cmd(), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env({"AGENT_SWARM_TEST_CRASH_AT": at}),
        )
        assert r.returncode == -signal.SIGKILL, (
            f"{at}: the crash hook did not fire (exit {r.returncode})\n{r.stdout}\n{r.stderr}"
        )

    # ---- reading state ----
    def db(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        con = sqlite3.connect(self.home / "registry.db")
        con.row_factory = sqlite3.Row
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        """A write behind agent-swarm's back (a hand-edited registry)."""
        con = sqlite3.connect(self.home / "registry.db")
        try:
            con.execute(sql, args)
            con.commit()
        finally:
            con.close()

    def names(self, table: str) -> list[str]:
        return sorted(r[0] for r in self.db(f"SELECT name FROM {table}"))

    def vm_state(self, kind: str, name: str) -> dict[str, Any] | None:
        return fake.vm_state(self.home, kind, name)

    def fake_vms(self) -> set[tuple[str, str]]:
        d = self.home / fake.STATE_DIR
        out = set()
        for f in d.glob("*.json"):
            st = json.loads(f.read_text())
            out.add((st["kind"], st["name"]))
        return out

    def gen_files(self, project: str) -> list[Path]:
        """The project's generation disk files (not its warm template directories)."""
        d = self.home / "projects" / project
        files = [p for p in d.glob("gen-*") if p.name.split(".")[0][4:].isdigit() and p.is_file()]
        return sorted(files, key=lambda p: int(p.name.split(".")[0][4:]))

    def diagnose(self) -> list[Any]:
        """`doctor`'s findings, computed in this process (no --fix)."""
        from agent_swarm.core import Core
        from agent_swarm.doctor import Doctor
        from agent_swarm.registry import Registry

        with self.in_process():
            core = Core(Registry(self.home / "registry.db"), write_ssh_config=False)
            try:
                return Doctor(core).diagnose()
            finally:
                core.close()

    def views(self) -> dict[str, Any]:
        """`list` + `project list` as views, computed in this process, by name."""
        from agent_swarm.core import Core
        from agent_swarm.registry import Registry

        with self.in_process():
            core = Core(Registry(self.home / "registry.db"), write_ssh_config=False)
            try:
                return {v.name: v for v in [*core.views.projects(), *core.views.tasks()]}
            finally:
                core.close()


def sha256(p: Path) -> str:
    """Of the file's data and the layout of its holes (by length, not read: a 1 GiB raw disk
    holds a few KiB of data). Equal digests: equal content; a rewrite of equal bytes into
    another layout differs, which is fine for "untouched" checks."""
    h = hashlib.sha256()
    size = p.stat().st_size
    with open(p, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # no data after pos (ENXIO)
                data = size
            h.update(b"hole %d\n" % (data - pos))
            if data >= size:
                break
            end = os.lseek(fd, data, os.SEEK_HOLE)
            f.seek(data)
            h.update(f.read(end - data))
            pos = end
    h.update(b"size %d" % size)
    return h.hexdigest()


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60)


def qemu_io_write(image: Path, pattern: int, offset: str, length: str = "64k") -> None:
    """Write like a guest would (the fake boots nothing)."""
    r = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", str(image)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def qemu_io_read(image: Path, pattern: int, offset: str, length: str = "64k") -> None:
    """The image (through its backing chain) reads ``pattern`` there."""
    r = subprocess.run(
        [
            "qemu-io",
            "-r",
            "-f",
            "qcow2",
            "-c",
            f"read -P {pattern:#x} {offset} {length}",
            str(image),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, (
        f"{image}: {r.stdout}{r.stderr}"
    )


def assert_qcow2_ok(*images: Path) -> None:
    for img in images:
        r = qemu_img("check", str(img))
        assert r.returncode == 0, f"{img}: {r.stdout}{r.stderr}"


def fingerprint(swarm: Swarm, task: str) -> tuple[object, ...]:
    """What must not change for a bystander task: its row, port, fake VM and files."""
    row = swarm.db("SELECT * FROM tasks WHERE name = ?", (task,))
    port = swarm.db("SELECT port FROM ports WHERE owner_kind = 'task' AND owner_name = ?", (task,))
    d = swarm.home / "tasks" / task
    files = {p.name: sha256(p) for p in sorted(d.iterdir()) if p.is_file()}
    return (
        [tuple(r) for r in row],
        [tuple(r) for r in port],
        swarm.vm_state("task", task),
        files,
    )


def assert_consistent(swarm: Swarm, *, dynamic: bool = False, doctor: bool = True) -> None:
    """Registry rows, ports, the fake's VMs, directories, generation files and the ssh_config
    all describe the same set of VMs (and doctor finds nothing)."""
    tasks = swarm.names("tasks")
    projects = swarm.names("projects")
    vms = {("task", t) for t in tasks} | {("project", p) for p in projects}
    assert swarm.fake_vms() == vms, "the fake's VMs are not the registered ones"
    dirs = {("task", p.name) for p in (swarm.home / "tasks").glob("*")} | {
        ("project", p.name) for p in (swarm.home / "projects").glob("*")
    }
    assert dirs == vms, "VM directories are not the registered VMs"
    for kind, name in vms:
        st = swarm.vm_state(kind, name)
        assert st is not None
        assert Path(st["spec"]["disk"]).is_file(), f"{kind} {name}: its disk is gone"
        assert Path(st["spec"]["seed"]).is_file(), f"{kind} {name}: its seed is gone"
    ports = [tuple(r) for r in swarm.db("SELECT port, owner_kind, owner_name FROM ports")]
    if dynamic:
        assert ports == []
    else:
        assert {(k, n) for _, k, n in ports} == vms, "ports are not the registered VMs'"
    assert len({p for p, _, _ in ports}) == len(ports)
    assert swarm.db("SELECT * FROM journal") == [], "a journal entry is left"
    for p in projects:
        registered = {
            r["path"] for r in swarm.db("SELECT path FROM generations WHERE project = ?", (p,))
        }
        on_disk = {str(f) for f in swarm.gen_files(p)}
        assert on_disk == registered, f"project {p}: generation files {on_disk} != {registered}"
        for f in on_disk:
            assert Path(f).stat().st_mode & 0o777 == GEN_MODE, f
    cfg = (swarm.home / "ssh_config").read_text() if vms else ""
    for kind, name in vms:
        alias = f"{name}.agent-swarm" if kind == "task" else f"{name}.project.agent-swarm"
        assert f"Host {alias}\n" in cfg, f"{alias} is not in ssh_config"
    assert cfg.count("\nHost ") == len(vms)
    if doctor:
        findings = swarm.diagnose()
        assert findings == [], [f.as_dict() for f in findings]


def seeded(
    swarm: Swarm,
    base_image: Path,
    *,
    project: str = "p1",
    start: bool = False,
    bystander: str | None = "bystander",
) -> None:
    """Through the core API (the CLI flow is test_flow's): the base image, a project sealed
    into generation 1 and (optionally) a stopped bystander task."""
    with swarm.core() as core:
        core.images.register("tiny", str(base_image))
        core.projects.create(project, cpus=1, memory_mib=512, disk_gib=1, start=start)
        core.seal.seal(project)
        if bystander:
            core.tasks.create(project, bystander, start=False)
