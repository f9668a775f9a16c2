"""The provider contract against the VZ provider.

Here (Linux): the real provider code and the real ``agent-swarm-vz`` helper (its portable core:
protocol, state machine, lock, save/restore checks, DHCP lease lookup) built with the fake
backend, which stands in for Virtualization.framework. Disks live on a reflink XFS, where
``clone_file`` clones them as ``clonefile(2)`` does on APFS; the addresses come from a lease
file in bootpd's format (documentation addresses, never connected to).

On a Mac (``AGENT_SWARM_VZ_REAL=1``, ``ci/macos.sh``): the installed, signed helper drives real
VZ VMs; ``AGENT_SWARM_VZ_IMAGE`` names a raw cloud image that boots (so the guest gets a DHCP
lease), cloned for every VM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_swarm import native
from agent_swarm.models import InstanceState, VMSpec
from agent_swarm.providers.vz import helper as hp
from agent_swarm.providers.vz.provider import FAKE_ENV, LEASES_ENV, VZProvider, mac_for
from providers.contract import MakeSpec, ProviderContract, SpecFactory
from vz_support import build_vz_helper, xfs_scratch

REAL = os.environ.get("AGENT_SWARM_VZ_REAL") == "1"
LEASE_NET = "198.51.100."  # TEST-NET-2: data only, nothing connects to it


@pytest.fixture(scope="session")
def vz_helper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if REAL:
        return hp.helper_path()
    return build_vz_helper(tmp_path_factory.mktemp("vz-contract") / "build")


@pytest.fixture(scope="session")
def vz_xfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if REAL:
        yield tmp_path_factory.mktemp("vz-apfs")
        return
    with xfs_scratch(tmp_path_factory.mktemp("vz-xfs")) as work:
        yield work


def write_lease(leases: Path, mac: str, n: int) -> None:
    """Appends a lease in /var/db/dhcpd_leases' format; octets without leading zeros, as
    bootpd writes them."""
    hw = ":".join(f"{int(o, 16):x}" for o in mac.split(":"))
    block = (
        "{\n"
        f"\tname=vm{n}\n\tip_address={LEASE_NET}{10 + n}\n\thw_address=1,{hw}\n"
        f"\tidentifier=1,{hw}\n\tlease=0x{int(time.time()) + 3600:x}\n"
        "}\n"
    )
    with open(leases, "a") as f:
        f.write(block)


class TestVZContract(ProviderContract):
    records_owner = True  # vm.json records the state directory

    @pytest.fixture
    def spec_factory(self, vz_xfs: Path) -> Iterator[SpecFactory]:
        root = Path(tempfile.mkdtemp(prefix="vms-", dir=vz_xfs))
        yield SpecFactory(root)
        shutil.rmtree(root, ignore_errors=True)

    @pytest.fixture
    def make_spec(self, provider: VZProvider, spec_factory: SpecFactory) -> MakeSpec:
        image = os.environ.get("AGENT_SWARM_VZ_IMAGE")
        leases = os.environ.get(LEASES_ENV)

        def make(kind: str, name: str) -> VMSpec:
            spec = spec_factory(kind, name, "raw", "nat")
            if REAL and image:
                native.clone_file(image, spec.disk, overwrite=True)
            if leases:
                write_lease(
                    Path(leases), mac_for(provider.home, kind, name), len(spec_factory.made)
                )
            return spec

        return make

    def _make(self, home: Path, helper: Path, monkeypatch: pytest.MonkeyPatch) -> VZProvider:
        monkeypatch.setenv("AGENT_SWARM_HOME", str(home))
        if not REAL:
            monkeypatch.setenv(hp.HELPER_ENV, str(helper))
            # The "guest" ignores ACPI, as the contract's empty disks do under a real VMM.
            monkeypatch.setenv(FAKE_ENV, json.dumps({"boot_ms": 30, "ignore_request_stop": True}))
            leases = home / "dhcpd_leases"
            leases.touch()
            monkeypatch.setenv(LEASES_ENV, str(leases))
        return VZProvider()

    @staticmethod
    def _teardown(provider: VZProvider) -> None:
        """Every helper this provider started must be gone, killed by pid if need be."""
        alive = []
        for d in provider.root.glob("*"):
            pid = hp.lock_holder(d)
            if pid is not None:
                alive.append(d.name)
                if pid > 1:
                    os.kill(pid, signal.SIGKILL)
                hp.wait_exit(d, 10)
        assert not alive, f"helpers left running: {alive}"

    @pytest.fixture
    def provider(
        self, vz_helper: Path, vz_xfs: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[VZProvider]:
        home = Path(tempfile.mkdtemp(prefix="as-vz-", dir=vz_xfs))
        p = self._make(home, vz_helper, monkeypatch)
        yield p
        try:
            for (kind, name), _ in p.list_ours().items():
                cfg = json.loads((p.root / f"{kind}-{name}" / hp.CONFIG_FILE).read_text())
                if hp.lock_holder(Path(cfg["dir"])) is not None:
                    hp.kill_helper(Path(cfg["dir"]))
            self._teardown(p)
        finally:
            shutil.rmtree(home, ignore_errors=True)

    @pytest.fixture
    def other_provider(
        self,
        provider: VZProvider,
        vz_helper: Path,
        vz_xfs: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> Iterator[VZProvider]:
        ours = dict(os.environ)
        home = Path(tempfile.mkdtemp(prefix="as-vz-", dir=vz_xfs))
        p = self._make(home, vz_helper, monkeypatch)
        for key in ("AGENT_SWARM_HOME", LEASES_ENV):
            if key in ours:
                monkeypatch.setenv(key, ours[key])
        yield p
        try:
            self._teardown(p)
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def break_runtime(self, provider: VZProvider, spec: VMSpec) -> None:
        """Remove the helper's control socket, as macOS' periodic $TMPDIR clean-up does to a
        socket that had to live there: the VM runs, nobody can control it."""
        st = hp.read_state(provider.root / f"{spec.kind}-{spec.name}")
        assert st is not None
        os.unlink(st["socket"])


# ---- beyond the contract: what is particular to VZ ----


@pytest.fixture
def vz(
    vz_helper: Path, vz_xfs: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[VZProvider, SpecFactory]]:
    if REAL:
        pytest.skip("fake-backend knobs: Linux only")
    home = Path(tempfile.mkdtemp(prefix="as-vz-", dir=vz_xfs))
    monkeypatch.setenv("AGENT_SWARM_HOME", str(home))
    monkeypatch.setenv(hp.HELPER_ENV, str(vz_helper))
    monkeypatch.setenv(LEASES_ENV, str(home / "leases"))
    monkeypatch.setenv(FAKE_ENV, json.dumps({"boot_ms": 30}))
    p = VZProvider()
    factory = SpecFactory(home / "vms")
    yield p, factory
    try:
        TestVZContract._teardown(p)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_disks_are_clones_and_the_mac_is_stable(
    vz: tuple[VZProvider, SpecFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    p, factory = vz
    assert p.startup_notice() is None  # XFS with reflink: clones, no notice
    spec = factory("task", "t1", "raw", "nat")
    p.define(spec)
    cfg = json.loads((p.root / "task-t1" / "vm.json").read_text())
    assert cfg["mac"] == mac_for(p.home, "task", "t1")
    assert int(cfg["mac"][:2], 16) & 0b11 == 0b10  # locally administered, unicast
    assert (p.root / "task-t1" / "machine-id.bin").stat().st_size == 16
    p.define(spec)
    assert json.loads((p.root / "task-t1" / "vm.json").read_text())["mac"] == cfg["mac"]
    with open(spec.disk, "r+b") as f:
        f.write(b"before")
    p.checkpoint(spec, "c1")
    ck = p.root / "task-t1" / "checkpoints" / "c1" / "disk.img"
    assert ck.read_bytes()[:6] == b"before"
    assert (
        native.clone_file(spec.disk, spec.disk.with_suffix(".probe"), mode="reflink") == "reflink"
    )


def test_address_waits_for_the_lease_and_ignores_expired_ones(
    vz: tuple[VZProvider, SpecFactory],
) -> None:
    from agent_swarm.errors import Timeout

    p, factory = vz
    spec = factory("task", "t1", "raw", "nat")
    p.define(spec)
    p.start(spec)
    with pytest.raises(Timeout, match="no address yet"):
        p.ssh_endpoint(spec)
    mac = mac_for(p.home, "task", "t1")
    leases = Path(os.environ[LEASES_ENV])
    hw = ":".join(f"{int(o, 16):x}" for o in mac.split(":"))
    leases.write_text(
        "{\n\tip_address=198.51.100.7\n\thw_address=1,"
        + hw
        + f"\n\tlease=0x{int(time.time()) - 60:x}\n}}\n"
    )
    with pytest.raises(Timeout):
        p.ssh_endpoint(spec)  # expired
    write_lease(leases, mac, 3)
    ep = p.ssh_endpoint(spec)
    assert (ep.host, ep.port, ep.user) == ("198.51.100.13", 22, "worker")
    p.stop(spec, force=True)


def test_memory_checkpoint_unsupported_keeps_the_vm_running(
    vz: tuple[VZProvider, SpecFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS 13 has no save/restore: a checkpoint of a running VM is refused and the VM runs
    on (it was paused for the attempt); a stopped VM's checkpoint still works."""
    from agent_swarm.errors import UnsupportedByProvider

    p, factory = vz
    monkeypatch.setenv(FAKE_ENV, json.dumps({"boot_ms": 30, "no_save": True}))
    spec = factory("task", "t1", "raw", "nat")
    p.define(spec)
    p.start(spec)
    with pytest.raises(UnsupportedByProvider, match="macOS 14"):
        p.checkpoint(spec, "warm")
    assert p.status(spec).state is InstanceState.RUNNING
    assert p.list_checkpoints(spec) == []
    assert not list((p.root / "task-t1" / "checkpoints").iterdir())  # no half-made one
    p.stop(spec, force=True)
    p.checkpoint(spec, "cold")
    assert [c["name"] for c in p.list_checkpoints(spec)] == ["cold"]


def test_a_crashed_helper_reads_as_stopped_and_starts_again(
    vz: tuple[VZProvider, SpecFactory],
) -> None:
    p, factory = vz
    spec = factory("task", "t1", "raw", "nat")
    p.define(spec)
    p.start(spec)
    d = p.root / "task-t1"
    pid = hp.lock_holder(d)
    assert pid and pid > 1
    os.kill(pid, signal.SIGKILL)
    assert hp.wait_exit(d, 10)
    assert p.status(spec).state is InstanceState.STOPPED
    assert p.runtime_problem(spec) is None
    p.start(spec)
    assert p.status(spec).state is InstanceState.RUNNING
    assert hp.lock_holder(d) not in (None, pid)
    p.stop(spec, force=True)


def test_a_failing_start_says_why(
    vz: tuple[VZProvider, SpecFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_swarm.errors import ProviderError

    p, factory = vz
    monkeypatch.setenv(FAKE_ENV, json.dumps({"boot_ms": 30, "crash_after_ms": 1}))
    spec = factory("task", "t1", "raw", "nat")
    p.define(spec)
    with pytest.raises(ProviderError, match="simulated crash"):
        p.start(spec)
    assert p.status(spec).state is InstanceState.STOPPED


def test_list_ours_reads_files_only(vz: tuple[VZProvider, SpecFactory]) -> None:
    """list_ours of running VMs costs no socket round trip: it works with every control
    socket gone."""
    p, factory = vz
    specs = [factory("task", f"t{i}", "raw", "nat") for i in range(3)]
    for s in specs:
        p.define(s)
        p.start(s)
    for s in specs:
        os.unlink(hp.read_state(p.root / f"task-{s.name}")["socket"])  # type: ignore[index]
    ours = p.list_ours()
    assert {k: v.state for k, v in ours.items()} == {
        ("task", f"t{i}"): InstanceState.RUNNING for i in range(3)
    }
    for s in specs:
        p.stop(s, force=True)  # no socket: SIGTERM, the helper force-stops
        assert p.status(s).state is InstanceState.STOPPED


# ---- review: stop/delete/kill/checkpoint edge cases ----


def test_a_graceful_stop_survives_a_lost_control_socket(
    vz: tuple[VZProvider, SpecFactory],
) -> None:
    """macOS cleans $TMPDIR, where a long VM directory's socket lives: a graceful stop must
    make the helper bind its socket again and ask the guest, not pull the power (SIGTERM)."""
    p, factory = vz
    spec = factory("task", "t1", "raw", "nat")
    p.define(spec)
    p.start(spec)
    os.unlink(hp.read_state(p.root / "task-t1")["socket"])  # type: ignore[index]
    p.stop(spec, timeout=30)
    assert p.status(spec).state is InstanceState.STOPPED
    assert "fake: guest powered off" in Path(spec.serial_log).read_text()  # asked, not forced


def test_kill_helper_never_signals_a_pid_that_is_not_the_helper(tmp_path: Path) -> None:
    """The pid in vz.lock can be stale (a helper killed by SIGKILL leaves it; the next one
    rewrites it only after taking the lock) and then name any process: never signal it."""
    import fcntl
    import subprocess

    from agent_swarm.errors import ProviderError

    d = tmp_path / "task-x"
    d.mkdir()
    (d / hp.CONFIG_FILE).write_text("{}")
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        fd = os.open(d / hp.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{bystander.pid}\n".encode())
        with pytest.raises(ProviderError, match="not its helper"):
            hp.kill_helper(d, wait=0.5)
        assert bystander.poll() is None, "an unrelated process was signalled"
        os.close(fd)
    finally:
        bystander.kill()
        bystander.wait()


def test_a_socket_of_another_user_is_not_trusted(tmp_path: Path) -> None:
    """state.json names the socket; one that is not ours (planted in a shared /tmp) is
    refused before anything is sent to it."""
    import socket as so

    from agent_swarm.errors import ProviderError

    d = tmp_path / "task-x"
    d.mkdir()
    path = tmp_path / "asvz-0000.sock"
    srv = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    try:
        if os.geteuid() == 0:
            os.chown(path, 65534, 65534)
        else:
            pytest.skip("needs root to give the socket another owner")
        (d / hp.STATE_FILE).write_text(json.dumps({"socket": str(path), "pid": 1}))
        with pytest.raises(ProviderError, match="not our helper's socket"):
            hp.call(d, "status", wait=2)
    finally:
        srv.close()


def test_delete_without_vm_json_still_stops_the_helper(
    vz: tuple[VZProvider, SpecFactory],
) -> None:
    p, factory = vz
    spec = factory("task", "t1", "raw", "nat")
    p.define(spec)
    p.start(spec)
    d = p.root / "task-t1"
    (d / hp.CONFIG_FILE).unlink()
    p.delete(spec)
    assert not d.exists()
    assert p.status(spec).state is InstanceState.MISSING


def test_a_checkpoint_whose_save_times_out_resumes_the_vm(
    vz: tuple[VZProvider, SpecFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save's reply does not come in time: the checkpoint fails with that error (not a
    bad_state from resuming mid-save) and the VM runs again once the save has ended."""
    from agent_swarm.errors import ProviderError
    from agent_swarm.providers.vz import provider as pv

    p, factory = vz
    monkeypatch.setenv(FAKE_ENV, json.dumps({"boot_ms": 30, "save_ms": 1500}))
    monkeypatch.setattr(pv, "SAVE_TIMEOUT", 0.3)
    spec = factory("task", "t1", "raw", "nat")
    p.define(spec)
    p.start(spec)
    with pytest.raises(ProviderError) as err:
        p.checkpoint(spec, "c1")
    assert not isinstance(err.value, hp.HelperCallError), err.value
    assert "does not answer" in str(err.value)
    deadline = time.monotonic() + 5
    while p.status(spec).state is not InstanceState.RUNNING:
        assert time.monotonic() < deadline, p.status(spec)
        time.sleep(0.05)
    assert p.list_checkpoints(spec) == []
    assert not list((p.root / "task-t1" / "checkpoints").iterdir())
    p.stop(spec, force=True)
