"""What one task create costs, measured in-process on the core API: registry write
transactions (each one an fsync'd commit and a moment holding the database lock that every
concurrent command waits for) and ssh_config rewrites."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workflow_support import TESTS


class WriteTransactions:
    """Counts the write transactions a registry connection begins (``BEGIN …``)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return sum(1 for s in self.statements if s.lstrip().upper().startswith("BEGIN"))

    @contextlib.contextmanager
    def measure(self) -> Iterator[WriteTransactions]:
        self.statements = []
        self.conn.set_trace_callback(self.statements.append)
        try:
            yield self
        finally:
            self.conn.set_trace_callback(None)


@pytest.fixture
def core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_image: Path) -> Iterator[Any]:
    for k in list(os.environ):
        if k.startswith("AGENT_SWARM_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AGENT_SWARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AGENT_SWARM_TEST_PROVIDERS", "fake=fakes.provider:FakeProvider")
    monkeypatch.setenv("AGENT_SWARM_PROVIDER", "fake")
    monkeypatch.syspath_prepend(str(TESTS))  # fakes.provider
    from agent_swarm import paths
    from agent_swarm.core import Core
    from agent_swarm.registry import Registry

    paths.ensure_home()
    c = Core(Registry(paths.registry_path()))
    try:
        c.images.register("tiny", str(base_image))
        c.projects.create("p", cpus=1, memory_mib=512, disk_gib=1, wait=True)
        assert c.seal.seal("p") == 1
        yield c
    finally:
        c.close()


def test_one_task_create_costs(core: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_swarm.ssh import config

    writes: list[object] = []
    real_write = config.write

    def counting_write(reg: Any) -> Path:
        writes.append(reg)
        return real_write(reg)

    monkeypatch.setattr(config, "write", counting_write)
    tx = WriteTransactions(core.reg._conn)
    with tx.measure():
        t = core.tasks.create("p", "t", start=False)
    assert t.generation == 1 and (core.layout.vm_dir("task", "t") / "disk.qcow2").is_file()
    # The bound is 3; the code promises 2 (row + port + journal entry, then its end).
    assert tx.count == 2, tx.statements
    assert len(writes) == 1
    assert "Host t.agent-swarm" in config.config_path().read_text()


def test_the_counter_counts(core: Any) -> None:
    """Without this, `count <= 3` would also hold for a counter that never sees anything."""
    tx = WriteTransactions(core.reg._conn)
    with tx.measure():
        core.reg.set_host_key("project", "p", core.reg.get_project("p").host_key)
    assert tx.count == 1
    with tx.measure():
        core.reg.get_project("p")
        core.reg.list_tasks()
    assert tx.count == 0
