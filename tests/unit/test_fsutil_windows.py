"""fsutil on a host without os.fchmod (Windows before Python 3.13): writes still work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_swarm.fsutil import atomic_write


def test_atomic_write_without_fchmod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "fchmod")
    atomic_write(tmp_path / "f", "data", mode=0o600)
    assert (tmp_path / "f").read_text() == "data"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temp file left
