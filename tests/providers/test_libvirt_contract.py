"""The provider contract against the real libvirt provider (libvirtd, QEMU, passt).

The VMs have an empty disk: they start into a BIOS with nothing to boot, which is all the
lifecycle needs, so no test waits for a guest. Each test has its own short state directory
(the provider names its domains after it), and every domain it made is destroyed and
undefined afterwards: teardown fails if ``virsh list --all`` still shows one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_swarm.models import VMSpec
from providers.contract import ProviderContract, SpecFactory

URI = "qemu:///system"
pytestmark = pytest.mark.integration  # real VMs (no guest boots: seconds, not minutes)


def virsh_domains() -> list[str]:
    r = subprocess.run(
        ["virsh", "-c", URI, "list", "--all", "--name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]


def _remove_with_virsh(dname: str) -> None:
    for cmd in (["destroy", dname], ["undefine", "--snapshots-metadata", dname]):
        subprocess.run(["virsh", "-c", URI, *cmd], capture_output=True, timeout=60)


class TestLibvirtContract(ProviderContract):
    records_owner = True  # the domain's agent-swarm metadata holds its home

    def _make(self, home: Path, monkeypatch: pytest.MonkeyPatch) -> object:
        # AGENT_SWARM_HOME before the provider exists: its domain names carry a hash of it.
        from agent_swarm.providers.libvirt.provider import LibvirtProvider

        monkeypatch.setenv("AGENT_SWARM_HOME", str(home))
        return LibvirtProvider()

    def _teardown(self, provider: object, spec_factory: SpecFactory, *, last: bool) -> None:
        """Delete every domain of ``provider``; fail if any is left (or, once the last
        provider is gone, any passt of the test's VMs still runs)."""
        from agent_swarm.providers.libvirt import net
        from agent_swarm.providers.libvirt.provider import LibvirtProvider

        assert isinstance(provider, LibvirtProvider)
        try:
            for (kind, name), _st in provider.list_ours().items():
                for spec in spec_factory.specs_of(kind, name):
                    with contextlib.suppress(Exception):
                        provider.delete(spec)
        finally:
            leftovers = [d for d in virsh_domains() if d.startswith(provider._prefix)]
            for d in leftovers:
                _remove_with_virsh(d)
            provider.close()
        assert not leftovers, f"domains left behind: {leftovers}"
        if not last:
            return
        alive = [s.name for s in spec_factory.made if net.running_pid(s) is not None]
        for s in spec_factory.made:
            net.stop(s)
        assert not alive, f"passt left running for {alive}"

    @pytest.fixture
    def provider(
        self, libvirtd: None, spec_factory: SpecFactory, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[object]:
        # Short: the VMs' passt sockets live in <home>/run (sun_path is 108 bytes).
        home = Path(tempfile.mkdtemp(prefix="as-contract-", dir="/tmp"))
        p = self._make(home, monkeypatch)
        yield p
        try:
            self._teardown(p, spec_factory, last=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)

    @pytest.fixture
    def other_provider(
        self, provider: object, spec_factory: SpecFactory, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[object]:
        home = Path(tempfile.mkdtemp(prefix="as-contract-", dir="/tmp"))
        ours = os.environ["AGENT_SWARM_HOME"]
        p = self._make(home, monkeypatch)
        monkeypatch.setenv("AGENT_SWARM_HOME", ours)
        yield p
        try:
            self._teardown(p, spec_factory, last=False)
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def break_runtime(self, provider: object, spec: VMSpec) -> None:
        """Kill the VM's passt (only that PID): the guest runs but has no network."""
        from agent_swarm.providers.libvirt import net

        pid = net.running_pid(spec)
        assert pid is not None, "the running VM has no passt"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while net.running_pid(spec) is not None:
            assert time.monotonic() < deadline, f"passt {pid} did not die"
            time.sleep(0.05)
