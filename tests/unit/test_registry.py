from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from agent_swarm.errors import (
    AlreadyExists,
    ImageNotFound,
    InstanceNotFound,
    InvalidName,
    InvalidState,
    ProjectNotFound,
    RegistryError,
)
from agent_swarm.registry import SCHEMA_VERSION, Registry


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry(tmp_path / "registry.db")
    yield r
    r.close()


def _base(reg: Registry, name: str = "debian-12") -> None:
    reg.add_base_image(
        name,
        path=f"/img/{name}.qcow2",
        format="qcow2",
        virtual_size=1 << 30,
        source="build:debian-12",
    )


def _project(reg: Registry, name: str = "myapp") -> None:
    reg.add_project(
        name, base_image="debian-12", provider="libvirt", cpus=2, memory_mib=2048, disk_gib=20
    )


def test_new_database_is_wal_versioned_and_private(tmp_path: Path) -> None:
    db = tmp_path / "state" / "registry.db"
    with Registry(db) as r:
        assert r.schema_version == SCHEMA_VERSION >= 1
    assert (db.stat().st_mode & 0o777) == 0o600
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"base_images", "projects", "generations", "tasks", "ports", "env_vars"} <= tables


def test_reopen_does_not_migrate_again(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    with Registry(db) as r:
        _base(r)
    with Registry(db) as r:
        assert [b.name for b in r.list_base_images()] == ["debian-12"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    Registry(db).close()
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(RegistryError, match="newer than this agent-swarm") as ei:
        Registry(db)
    assert "upgrade" in (ei.value.hint or "")


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RegistryError, match="unreadable") as ei:
        Registry(db)
    assert ei.value.hint


def test_full_lifecycle_and_constraints(reg: Registry) -> None:
    _base(reg)
    with pytest.raises(AlreadyExists):
        _base(reg)
    with pytest.raises(ImageNotFound):
        reg.add_project(
            "x", base_image="nope", provider="libvirt", cpus=1, memory_mib=512, disk_gib=1
        )
    assert reg.list_projects() == []
    _project(reg)
    with pytest.raises(AlreadyExists):
        _project(reg)
    # A task needs a sealed generation first.
    with pytest.raises(InvalidState, match="no template yet") as ei:
        reg.add_task("t1", project="myapp", provider="libvirt", cpus=1, memory_mib=1024)
    assert "project stop myapp" in (ei.value.hint or "")
    assert reg.list_tasks() == []
    g1 = reg.add_generation("myapp", "/x/gen-1.qcow2")
    g2 = reg.add_generation("myapp", "/x/gen-2.qcow2")
    assert (g1.generation, g2.generation) == (1, 2)
    t = reg.add_task("t1", project="myapp", provider="libvirt", cpus=1, memory_mib=1024)
    assert t.generation == 2
    with pytest.raises(AlreadyExists):
        reg.add_task("t1", project="myapp", provider="libvirt", cpus=1, memory_mib=1024)
    with pytest.raises(ProjectNotFound):
        reg.add_task("t2", project="nope", provider="libvirt", cpus=1, memory_mib=1024)
    # The project and the base cannot go while they are used.
    with pytest.raises(InvalidState, match="t1"):
        reg.remove_project("myapp")
    with pytest.raises(InvalidState, match="myapp"):
        reg.remove_base_image("debian-12")
    reg.remove_task("t1")
    with pytest.raises(InstanceNotFound):
        reg.get_task("t1")
    reg.remove_project("myapp")
    assert reg.list_generations("myapp") == []  # cascaded
    reg.remove_base_image("debian-12")
    assert reg.list_base_images() == []


@pytest.mark.parametrize(
    "bad", ["", "A", "-x", "a_b", "a.b", "a/b", "../x", "x" * 64, "a b", "é", "a\n"]
)
def test_names_are_validated_before_anything_is_written(reg: Registry, bad: str) -> None:
    _base(reg)
    with pytest.raises(InvalidName):
        reg.add_project(
            bad, base_image="debian-12", provider="libvirt", cpus=1, memory_mib=512, disk_gib=1
        )
    assert reg.list_projects() == []


def test_failed_transaction_leaves_nothing(reg: Registry) -> None:
    _base(reg)
    with pytest.raises(RuntimeError), reg.transaction() as c:
        c.execute(
            "INSERT INTO projects (name, base_image, provider, cpus, memory_mib, "
            "disk_gib) VALUES ('p', 'debian-12', 'libvirt', 1, 512, 1)"
        )
        raise RuntimeError("crash in the middle")
    assert reg.list_projects() == []


def test_ports_are_unique_across_processes_and_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    Registry(db).close()
    got: dict[str, int] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with Registry(db) as r:  # one connection per thread, like separate processes
                got[f"t{i}"] = r.allocate_port("task", f"t{i}", iter(range(40000, 40100)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(got.values())) == 16
    with Registry(db) as r:
        assert r.allocate_port("task", "t3", iter(range(40000, 40100))) == got["t3"]
        assert r.port_of("task", "t3") == got["t3"]
        assert r.port_of("task", "nope") is None


def test_vms_from_before_isolation_keep_their_host_access(tmp_path: Path) -> None:
    """Schema v3: rows of VMs defined before isolation existed keep host access (their
    libvirt definitions use QEMU's user network); new rows default to isolated."""
    import sqlite3
    from importlib import resources

    db = tmp_path / "registry.db"
    con = sqlite3.connect(db)
    mig = resources.files("agent_swarm.registry.migrations")
    for n in ("0001_initial.sql", "0002_journal.sql"):
        con.executescript(mig.joinpath(n).read_text())
    con.execute("PRAGMA user_version = 2")
    con.execute(
        "INSERT INTO base_images (name, path, format, virtual_size, source) "
        "VALUES ('b', '/x', 'qcow2', 1, 'file:/x')"
    )
    con.execute(
        "INSERT INTO projects (name, base_image, provider, cpus, memory_mib, disk_gib) "
        "VALUES ('old', 'b', 'libvirt', 1, 512, 1)"
    )
    con.commit()
    con.close()
    with Registry(db) as r:
        assert r.get_project("old").host_access is True
        r.add_project("new", base_image="b", provider="libvirt", cpus=1, memory_mib=512, disk_gib=1)
        assert r.get_project("new").host_access is False


def test_schema_4_keeps_every_row_and_relaxes_the_libvirt_checks(tmp_path: Path) -> None:
    """Schema v4 rebuilds tables (CHECKs): every row survives, generations learn their format,
    provider and shape, references are still enforced, and non-libvirt values pass."""
    import sqlite3
    from importlib import resources

    from agent_swarm.errors import InvalidState

    db = tmp_path / "registry.db"
    con = sqlite3.connect(db)
    mig = resources.files("agent_swarm.registry.migrations")
    for n in ("0001_initial.sql", "0002_journal.sql", "0003_host_access.sql"):
        con.executescript(mig.joinpath(n).read_text())
    con.execute("PRAGMA user_version = 3")
    con.executescript(
        "INSERT INTO base_images (name, path, format, virtual_size, source)"
        "  VALUES ('b', '/x', 'qcow2', 1, 'file:/x');"
        "INSERT INTO projects (name, base_image, provider, cpus, memory_mib, disk_gib, host_key)"
        "  VALUES ('p', 'b', 'libvirt', 2, 1024, 8, 'ssh-ed25519 K');"
        "INSERT INTO generations (project, generation, path) VALUES ('p', 1, '/g1');"
        "INSERT INTO tasks (name, project, generation, provider, cpus, memory_mib)"
        "  VALUES ('t', 'p', 1, 'libvirt', 1, 512);"
        "INSERT INTO ports (port, owner_kind, owner_name) VALUES (41000, 'task', 't');"
        "INSERT INTO journal (op, kind, name, pid, pid_start)"
        "  VALUES ('seal', 'project', 'p', 1, 'x');"
    )
    con.commit()
    con.close()
    with Registry(db) as r:
        assert r.schema_version == SCHEMA_VERSION >= 4
        p = r.get_project("p")
        assert (p.provider, p.cpus, p.host_key, p.host_access) == (
            "libvirt",
            2,
            "ssh-ed25519 K",
            False,  # inserted after 0003: the column's default
        )
        g = r.get_generation("p", 1)
        assert (g.format, g.provider, g.cpus, g.memory_mib, g.disk_gib) == (
            "qcow2",
            "libvirt",
            2,
            1024,
            8,
        )
        assert g.memory_image is None and g.host_key is None
        assert r.get_task("t").generation == 1 and r.port_of("task", "t") == 41000
        assert [e.op for e in r.journal()] == ["seal"]
        # references survive the rebuild: a pinned generation cannot go
        with pytest.raises(InvalidState):
            r.remove_generation("p", 1)
        # values only other providers use now pass
        r.add_project(
            "vz",
            base_image="b",
            provider="vz",
            cpus=1,
            memory_mib=512,
            disk_gib=1,
            network="shared",
        )
        g2 = r.add_generation("vz", "/vz/gen-1.img", format="raw")
        assert (g2.format, g2.provider) == ("raw", "vz")
        r.journal_end(r.journal_begin("gc", "project", "vz"))
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_schema_5_keeps_the_journal_and_tasks_and_knows_warm(tmp_path: Path) -> None:
    """Schema v5 (warm clones) rebuilds the journal (its op CHECK): an entry of an interrupted
    operation survives with its id, step and provider; the journal accepts ``warm``; tasks
    gain ``warm_from`` ('' for the tasks there are: they booted cold)."""
    from importlib import resources

    db = tmp_path / "registry.db"
    con = sqlite3.connect(db)
    mig = resources.files("agent_swarm.registry.migrations")
    for n in ("0001_initial.sql", "0002_journal.sql", "0003_host_access.sql", "0004_providers.sql"):
        con.executescript(mig.joinpath(n).read_text())
    con.execute("PRAGMA user_version = 4")
    with pytest.raises(sqlite3.IntegrityError):  # what v4 refused
        con.execute(
            "INSERT INTO journal (op, kind, name, pid, pid_start) VALUES ('warm', 'project', 'x', "
            "1, 'x')"
        )
    con.executescript(
        "INSERT INTO base_images (name, path, format, virtual_size, source)"
        "  VALUES ('b', '/x', 'qcow2', 1, 'file:/x');"
        "INSERT INTO projects (name, base_image, provider, cpus, memory_mib, disk_gib)"
        "  VALUES ('p', 'b', 'fake', 2, 1024, 8);"
        "INSERT INTO generations (project, generation, path, format, provider)"
        "  VALUES ('p', 1, '/g1', 'qcow2', 'fake');"
        "INSERT INTO tasks (name, project, generation, provider, cpus, memory_mib, host_key)"
        "  VALUES ('t', 'p', 1, 'fake', 1, 512, 'ssh-ed25519 T');"
        "INSERT INTO journal (id, op, kind, name, step, detail, pid, pid_start, provider)"
        "  VALUES (7, 'create', 'task', 'half', 'disk', 'start', 4242, 'gone', 'fake');"
    )
    con.commit()
    con.close()
    with Registry(db) as r:
        assert r.schema_version == SCHEMA_VERSION >= 5
        (e,) = r.journal()
        assert (e.id, e.op, e.kind, e.name, e.step, e.detail, e.pid, e.pid_start, e.provider) == (
            7,
            "create",
            "task",
            "half",
            "disk",
            "start",
            4242,
            "gone",
            "fake",
        )
        t = r.get_task("t")
        assert (t.generation, t.host_key, t.warm_from) == (1, "ssh-ed25519 T", "")
        # the journal takes the new operation, and still one operation per VM
        entry = r.journal_begin("warm", "project", "p", provider="fake")
        assert [x.op for x in r.journal()] == ["create", "warm"]
        with pytest.raises(sqlite3.IntegrityError):
            r._conn.execute(
                "INSERT INTO journal (op, kind, name, pid, pid_start)"
                " VALUES ('warm', 'project', 'p', 1, 'x')"
            )
        r.journal_end(entry)
        with pytest.raises(sqlite3.IntegrityError):
            r._conn.execute(
                "INSERT INTO journal (op, kind, name, pid, pid_start)"
                " VALUES ('nope', 'project', 'p', 1, 'x')"
            )
        # a warm clone records its template; the template cannot be forgotten under it
        r.set_warm("p", 1, "/p/gen-1.warm", "ssh-ed25519 W")
        g = r.get_generation("p", 1)
        assert (g.memory_image, g.host_key) == ("/p/gen-1.warm", "ssh-ed25519 W")
        w = r.add_task(
            "w", project="p", provider="fake", cpus=1, memory_mib=512, warm_from="/p/gen-1.warm"
        )
        assert r.get_task("w").warm_from == "/p/gen-1.warm" and w.warm_from == "/p/gen-1.warm"
        with pytest.raises(InvalidState, match="used by tasks"):
            r.set_warm("p", 1, None, "")
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
