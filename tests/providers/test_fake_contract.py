"""The provider contract, run against the fake provider of tests/fakes in several
capability configurations (AGENT_SWARM_FAKE_CAPS)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_swarm.models import VMSpec
from fakes.provider import CAPS_ENV, FakeProvider, set_vm_state
from providers.contract import ProviderContract

CAPS = {
    "default": "",
    "raw-dynamic": "disk_format=raw,dynamic_address=1",
    "vhdx-nosnap": "disk_format=vhdx,snapshots=0,memory_snapshots=0",
    "disk-snapshots-only": "memory_snapshots=0,warm_clones=1,networks=user",
}


class TestFakeContract(ProviderContract):
    @pytest.fixture(params=list(CAPS.values()), ids=list(CAPS))
    def provider(
        self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[FakeProvider]:
        monkeypatch.setenv(CAPS_ENV, request.param)
        monkeypatch.setenv("AGENT_SWARM_HOME", str(tmp_path / "home"))
        p = FakeProvider()
        yield p
        p.close()

    @pytest.fixture
    def other_provider(
        self, provider: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> FakeProvider:
        monkeypatch.setenv("AGENT_SWARM_HOME", str(tmp_path / "other-home"))
        p = FakeProvider()
        monkeypatch.setenv("AGENT_SWARM_HOME", str(provider.home))
        return p

    def break_runtime(self, provider: FakeProvider, spec: VMSpec) -> None:  # type: ignore[override]
        set_vm_state(provider.home, spec.kind, spec.name, network_dead=True)
