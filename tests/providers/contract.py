"""The provider contract as tests: what every provider must do, whatever its backend.

A provider's test module subclasses :class:`ProviderContract` and provides the fixtures

``provider``
    a provider instance for a private state directory (``AGENT_SWARM_HOME`` set before it
    is constructed), torn down with every VM it created;
``other_provider``
    a provider of the same kind for a second state directory (VMs of one state directory
    must never show up in the other's ``list_ours``);

and may override ``make_spec`` (the default builds a VM's files with :class:`SpecFactory`)
and the hook :meth:`ProviderContract.break_runtime` (make a running VM unusable in the way
its ``runtime_problem`` reports). The VMs never boot an OS: an empty disk is enough for the
lifecycle, so nothing here waits for a guest.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_swarm import paths
from agent_swarm.cloudinit.seed import build_seed_iso, cloud_config
from agent_swarm.errors import AgentSwarmError, Timeout, UnsupportedByProvider
from agent_swarm.models import GUEST_USER, InstanceState, SSHEndpoint, VMSpec
from agent_swarm.providers.base import Capabilities, Provider, ProviderInfo, VMStatus

DISK_SIZE = 64 << 20
MEMORY_MIB = 256  # small: memory checkpoints write it all (slow under TCG)
ADDRESS_WAIT = 30.0  # how long a dynamic_address provider may take to have an address
MakeSpec = Callable[[str, str], VMSpec]


def free_port(taken: set[int]) -> int:
    """A loopback TCP port nobody listens on now (and not handed out before)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def make_disk(path: Path, disk_format: str, size: int = DISK_SIZE) -> None:
    """An empty disk image: nothing to boot, which is all the lifecycle needs."""
    if disk_format == "raw":
        with open(path, "wb") as f:
            f.truncate(size)
        return
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", disk_format, str(path), str(size)],
        check=True,
        capture_output=True,
    )


class SpecFactory:
    """Builds VM specs with real files (disk, seed) under ``root``; remembers them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports: set[int] = set()
        self.made: list[VMSpec] = []

    def __call__(self, kind: str, name: str, disk_format: str, network: str = "user") -> VMSpec:
        d = self.root / f"{len(self.made)}-{kind}-{name}"
        d.mkdir(parents=True)
        disk = d / f"disk.{disk_format}"
        make_disk(disk, disk_format)
        seed = d / "cidata.iso"
        build_seed_iso(seed, instance_id=name, hostname=name, user_data=cloud_config({}))
        spec = VMSpec(
            kind=kind,
            name=name,
            cpus=1,
            memory_mib=MEMORY_MIB,
            disk=disk,
            seed=seed,
            serial_log=d / "serial.log",
            ssh_port=free_port(self.ports),
            network=network,
        )
        self.made.append(spec)
        return spec

    def specs_of(self, kind: str, name: str) -> list[VMSpec]:
        return [s for s in self.made if (s.kind, s.name) == (kind, name)]


class ProviderContract:
    """Every provider passes these. See the module docstring for the fixtures."""

    # A subclass sets this False where a checkpoint of a running VM is too slow to test.
    running_checkpoints = True
    # True where the provider records each VM's state directory (owner_of must name it).
    records_owner = False

    # ---- fixtures and hooks ----
    @pytest.fixture
    def spec_factory(self, tmp_path: Path) -> SpecFactory:
        return SpecFactory(tmp_path / "vms")

    @pytest.fixture
    def make_spec(self, provider: Provider, spec_factory: SpecFactory) -> MakeSpec:
        caps = provider.capabilities
        return lambda kind, name: spec_factory(kind, name, caps.disk_format, caps.networks[0])

    def break_runtime(self, provider: Provider, spec: VMSpec) -> None:
        """Make the running VM ``spec`` unusable the way ``runtime_problem`` detects."""
        raise NotImplementedError

    # ---- helpers ----
    @staticmethod
    def state(provider: Provider, spec: VMSpec) -> InstanceState:
        return provider.status(spec).state

    @staticmethod
    def endpoint(provider: Provider, spec: VMSpec) -> SSHEndpoint:
        """ssh_endpoint, retried on Timeout for a dynamic_address provider (as the core does)."""
        deadline = time.monotonic() + ADDRESS_WAIT
        while True:
            try:
                return provider.ssh_endpoint(spec)
            except Timeout:
                if not provider.capabilities.dynamic_address or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    # ---- host ----
    def test_info_matches_capabilities(self, provider: Provider) -> None:
        info = provider.info()
        assert isinstance(info, ProviderInfo)
        assert info.name == provider.name
        assert isinstance(info.version, str) and info.version
        caps = provider.capabilities
        assert isinstance(caps, Capabilities)
        assert info.capabilities == caps
        assert caps.disk_format in ("qcow2", "raw", "vhdx")
        assert caps.networks and all(isinstance(n, str) and n for n in caps.networks)
        assert all(isinstance(n, str) and n for n in caps.host_needs)
        if caps.memory_snapshots:
            assert caps.snapshots, "memory checkpoints without disk checkpoints"
        provider.check_host()

    def test_startup_notice_is_one_line_or_none(self, provider: Provider) -> None:
        notice = provider.startup_notice()
        assert notice is None or (isinstance(notice, str) and notice and "\n" not in notice)

    # ---- lifecycle ----
    def test_status_of_an_unknown_vm_is_missing(
        self, provider: Provider, make_spec: MakeSpec
    ) -> None:
        spec = make_spec("task", "never-defined")
        st = provider.status(spec)
        assert isinstance(st, VMStatus)
        assert st.state is InstanceState.MISSING
        assert st.reason
        assert ("task", "never-defined") not in provider.list_ours()
        assert provider.owner_of("task", "never-defined") is None
        assert provider.runtime_problem(spec) is None

    def test_operations_on_an_unknown_vm_raise_agent_swarm_errors(
        self, provider: Provider, make_spec: MakeSpec
    ) -> None:
        spec = make_spec("task", "never-defined")
        with pytest.raises(AgentSwarmError):
            provider.start(spec)
        with pytest.raises(AgentSwarmError):
            provider.stop(spec, force=True)
        assert self.state(provider, spec) is InstanceState.MISSING

    def test_define_is_idempotent_and_leaves_the_vm_stopped(
        self, provider: Provider, make_spec: MakeSpec
    ) -> None:
        spec = make_spec("project", "p1")
        provider.define(spec)
        first = provider.status(spec)
        assert first.state is InstanceState.STOPPED
        assert isinstance(first.label, str) and first.label
        provider.define(spec)  # again: no error, no second VM
        assert provider.status(spec) == first
        assert list(provider.list_ours()) == [("project", "p1")]

    def test_list_ours_is_exactly_this_state_directorys_vms(
        self, provider: Provider, other_provider: Provider, make_spec: MakeSpec
    ) -> None:
        specs = {
            ("project", "alpha"): make_spec("project", "alpha"),
            ("task", "my-task-2"): make_spec("task", "my-task-2"),  # dashes in the name
            ("task", "gone"): make_spec("task", "gone"),
        }
        for spec in specs.values():
            provider.define(spec)
        # Same kind and name in another state directory: never ours.
        theirs = make_spec("task", "gone")
        other_provider.define(theirs)
        provider.start(specs[("project", "alpha")])

        ours = provider.list_ours()
        assert set(ours) == set(specs)
        for key, spec in specs.items():
            assert isinstance(ours[key], VMStatus)
            live = provider.status(spec)
            assert (ours[key].state, ours[key].label) == (live.state, live.label), key
        assert ours[("project", "alpha")].state is InstanceState.RUNNING
        assert ours[("task", "my-task-2")].state is InstanceState.STOPPED

        home = str(paths.home())
        for kind, name in specs:
            owner = provider.owner_of(kind, name)
            # A provider that records the owner must report it: doctor leaves a VM alone only
            # when owner_of names another directory (a name-hash collision).
            assert owner == home if self.records_owner else owner in (None, home)
        assert other_provider.owner_of("task", "gone") != home

        provider.delete(specs[("task", "gone")])
        assert set(provider.list_ours()) == set(specs) - {("task", "gone")}
        assert set(other_provider.list_ours()) == {("task", "gone")}
        assert self.state(other_provider, theirs) is InstanceState.STOPPED

    def test_start_and_stop(self, provider: Provider, make_spec: MakeSpec) -> None:
        spec = make_spec("task", "t1")
        provider.define(spec)
        provider.start(spec)
        assert self.state(provider, spec) is InstanceState.RUNNING
        assert provider.runtime_problem(spec) is None
        provider.start(spec)  # already running: a no-op
        assert self.state(provider, spec) is InstanceState.RUNNING
        assert provider.runtime_problem(spec) is None

        # Graceful, falling back to a power-off when the guest does not react (nothing in
        # the contract's VMs handles ACPI).
        t0 = time.monotonic()
        provider.stop(spec, timeout=2)
        assert self.state(provider, spec) is InstanceState.STOPPED
        assert time.monotonic() - t0 < 30
        provider.stop(spec)  # stopped already: fine
        provider.stop(spec, force=True)
        assert self.state(provider, spec) is InstanceState.STOPPED
        assert provider.runtime_problem(spec) is None

        provider.start(spec)  # a stopped VM starts again
        assert self.state(provider, spec) is InstanceState.RUNNING
        provider.stop(spec, force=True)
        assert self.state(provider, spec) is InstanceState.STOPPED

    def test_ssh_endpoint_of_a_running_vm(self, provider: Provider, make_spec: MakeSpec) -> None:
        spec = make_spec("task", "t1")
        provider.define(spec)
        provider.start(spec)
        ep = self.endpoint(provider, spec)
        assert isinstance(ep, SSHEndpoint)
        assert ep.user == GUEST_USER == "worker"
        assert ep.host and 0 < ep.port < 65536
        if not provider.capabilities.dynamic_address:
            assert ep == SSHEndpoint("127.0.0.1", spec.ssh_port, GUEST_USER)
        provider.stop(spec, force=True)

    def test_delete(self, provider: Provider, make_spec: MakeSpec) -> None:
        running, stopped = make_spec("task", "t1"), make_spec("task", "t2")
        for spec in (running, stopped):
            provider.define(spec)
        provider.start(running)
        for spec in (running, stopped):
            provider.delete(spec)
            st = provider.status(spec)
            assert st.state is InstanceState.MISSING, st
            assert (spec.kind, spec.name) not in provider.list_ours()
            provider.delete(spec)  # already gone: success
        assert provider.list_ours() == {}
        provider.delete(make_spec("task", "never-defined"))
        # The VM's files are the core's: delete leaves them alone.
        assert running.disk.exists() and running.seed.exists()

    # ---- access ----
    def test_guest_session_is_none_or_a_session(
        self, provider: Provider, make_spec: MakeSpec
    ) -> None:
        spec = make_spec("task", "t1")
        provider.define(spec)
        session = provider.guest_session(spec)
        if session is None:
            return
        assert callable(session.run) and callable(session.close)
        provider.start(spec)
        rc, out, err = session.run("true", 30)
        assert (rc, type(out), type(err)) == (0, str, str)
        session.close()
        provider.stop(spec, force=True)

    def test_runtime_problem_is_repaired_by_start(
        self, provider: Provider, make_spec: MakeSpec
    ) -> None:
        spec = make_spec("task", "t1")
        provider.define(spec)
        provider.start(spec)
        assert provider.runtime_problem(spec) is None
        self.break_runtime(provider, spec)
        problem = provider.runtime_problem(spec)
        assert isinstance(problem, str) and problem
        assert self.state(provider, spec) is InstanceState.RUNNING  # runs, but unusable
        provider.start(spec)
        assert provider.runtime_problem(spec) is None
        assert self.state(provider, spec) is InstanceState.RUNNING
        provider.stop(spec, force=True)
        assert provider.runtime_problem(spec) is None

    # ---- checkpoints ----
    def test_checkpoints(self, provider: Provider, make_spec: MakeSpec) -> None:
        caps = provider.capabilities
        if not caps.snapshots:
            pytest.skip("no checkpoints (see test_checkpoints_unsupported)")
        spec = make_spec("task", "t1")
        provider.define(spec)
        assert provider.list_checkpoints(spec) == []
        t0 = time.time()
        provider.checkpoint(spec, "cold")
        cps = provider.list_checkpoints(spec)
        assert [c["name"] for c in cps] == ["cold"]
        assert t0 - 2 <= cps[0]["created"] <= time.time() + 2
        assert cps[0]["state"] == "shutoff"
        with pytest.raises(AgentSwarmError):
            provider.checkpoint(spec, "cold")  # names are unique
        with pytest.raises(AgentSwarmError):
            provider.restore(spec, "no-such-checkpoint")

        provider.start(spec)
        if caps.memory_snapshots and self.running_checkpoints:
            provider.checkpoint(spec, "warm")
            cps = provider.list_checkpoints(spec)
            assert [c["name"] for c in cps] == ["cold", "warm"]  # oldest first
            assert cps[1]["state"] == "running"
            assert self.state(provider, spec) is InstanceState.RUNNING
            provider.restore(spec, "cold")  # the power state comes back too
            assert self.state(provider, spec) is InstanceState.STOPPED
            provider.restore(spec, "warm")
            assert self.state(provider, spec) is InstanceState.RUNNING
            assert provider.runtime_problem(spec) is None
        elif not caps.memory_snapshots:
            with pytest.raises(UnsupportedByProvider):
                provider.checkpoint(spec, "warm")
            assert [c["name"] for c in provider.list_checkpoints(spec)] == ["cold"]
            provider.restore(spec, "cold")
            assert self.state(provider, spec) is InstanceState.STOPPED
        else:
            provider.restore(spec, "cold")
            assert self.state(provider, spec) is InstanceState.STOPPED

        # delete takes the checkpoints with it
        provider.delete(spec)
        provider.define(spec)
        assert provider.list_checkpoints(spec) == []

    def test_checkpoints_unsupported(self, provider: Provider, make_spec: MakeSpec) -> None:
        if provider.capabilities.snapshots:
            pytest.skip("this provider has checkpoints")
        assert not provider.capabilities.memory_snapshots
        spec = make_spec("task", "t1")
        provider.define(spec)
        calls: list[Callable[[], Any]] = [
            lambda: provider.checkpoint(spec, "c"),
            lambda: provider.restore(spec, "c"),
            lambda: provider.list_checkpoints(spec),
        ]
        for call in calls:
            with pytest.raises(UnsupportedByProvider):
                call()
