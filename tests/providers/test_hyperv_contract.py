"""The provider contract against the Hyper-V provider.

Here (any OS, no PowerShell): the real provider and its real runner (argument checks, framed
answers, error mapping), with the PowerShell process replaced by the fake of
tests/fakes/hyperv.py: it binds the arguments to each shipped script's real ``param()`` block
and answers as the script does on a Hyper-V host. Disks are what agent-swarm makes for
Hyper-V: differencing VHDX files written by ``agent_swarm.native`` on a dynamic VHDX base.
Beyond the contract: the exact script and parameters per operation, and what each error
category becomes.

On Windows with Hyper-V (``AGENT_SWARM_HYPERV_REAL=1``, ``ci/windows.ps1``): the system's
PowerShell drives real VMs; ``AGENT_SWARM_HYPERV_IMAGE`` names a dynamic VHDX that boots (an
Ubuntu cloud image: the guest gets a DHCP lease on the Default Switch), the parent of every
VM's disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_swarm import native
from agent_swarm.errors import (
    AlreadyExists,
    ConfigError,
    InstanceNotFound,
    InvalidName,
    InvalidState,
    NotFound,
    ProviderError,
    ProviderUnavailable,
    Timeout,
    UnsupportedByProvider,
)
from agent_swarm.models import InstanceState, VMSpec
from agent_swarm.providers.hyperv.provider import HyperVProvider, notes_for, owner_from_notes
from agent_swarm.providers.hyperv.runner import FLAGS, PowerShell
from fakes.hyperv import FakeHyperV
from providers.contract import MakeSpec, ProviderContract, SpecFactory

REAL = os.environ.get("AGENT_SWARM_HYPERV_REAL") == "1"
needs_fake = pytest.mark.skipif(REAL, reason="fake-host knobs: the fake PowerShell only")


@pytest.fixture(scope="session")
def vhdx_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parent of every VM disk: the booting image on Windows, else an empty dynamic VHDX."""
    if REAL:
        image = os.environ.get("AGENT_SWARM_HYPERV_IMAGE")
        if not image:
            pytest.fail("AGENT_SWARM_HYPERV_REAL=1 needs AGENT_SWARM_HYPERV_IMAGE (a VHDX)")
        return Path(image)
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed (it writes the dynamic VHDX base)")
    base = tmp_path_factory.mktemp("hyperv-base") / "base.vhdx"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vhdx", "-o", "subformat=dynamic", str(base), "64M"],
        check=True,
        capture_output=True,
    )
    return base


def fake_provider(host: FakeHyperV) -> HyperVProvider:
    return HyperVProvider(runner=PowerShell("powershell.exe", execute=host.execute))


def make_vhdx_spec(factory: SpecFactory, base: Path, kind: str, name: str) -> VMSpec:
    """A VM's files as the core makes them for Hyper-V: its disk a differencing VHDX."""
    spec = factory(kind, name, "vhdx", "nat")
    spec.disk.unlink()
    native.create_vhdx_differencing(spec.disk, base)
    return spec


def _remove_all(provider: HyperVProvider) -> list[tuple[str, str]]:
    """Delete every VM of this provider's state directory; which ones were left."""
    left = list(provider.list_ours())
    for kind, name in left:
        provider.delete(
            VMSpec(kind, name, 1, 256, Path("/x"), Path("/x"), Path("/x"), 0, network="nat")
        )
    return left


class TestHyperVContract(ProviderContract):
    records_owner = True  # the VM's Notes hold the state directory

    @pytest.fixture
    def host(self) -> FakeHyperV:
        return FakeHyperV()

    @pytest.fixture
    def provider(
        self, host: FakeHyperV, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[HyperVProvider]:
        home = Path(tempfile.mkdtemp(prefix="as-hv-", dir=tmp_path))
        monkeypatch.setenv("AGENT_SWARM_HOME", str(home))
        p = HyperVProvider() if REAL else fake_provider(host)
        yield p
        if REAL:
            assert _remove_all(p) == [], "VMs left behind"

    @pytest.fixture
    def other_provider(
        self,
        provider: HyperVProvider,
        host: FakeHyperV,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> Iterator[HyperVProvider]:
        """Another state directory on the same Hyper-V host."""
        home = Path(tempfile.mkdtemp(prefix="as-hv-", dir=tmp_path))
        monkeypatch.setenv("AGENT_SWARM_HOME", str(home))
        p = HyperVProvider() if REAL else fake_provider(host)
        monkeypatch.setenv("AGENT_SWARM_HOME", str(provider.home))
        yield p
        if REAL:
            _remove_all(p)

    @pytest.fixture
    def make_spec(self, spec_factory: SpecFactory, vhdx_base: Path) -> MakeSpec:
        return lambda kind, name: make_vhdx_spec(spec_factory, vhdx_base, kind, name)

    def break_runtime(self, provider: HyperVProvider, spec: VMSpec) -> None:
        """Disconnect the VM's network adapter from its switch, as a user could in Hyper-V
        Manager: it runs, but has no network."""
        vm = provider.vm_name(spec.kind, spec.name)
        if REAL:
            subprocess.run(
                [
                    provider.runner.executable,
                    *FLAGS,
                    "-Command",
                    f"Disconnect-VMNetworkAdapter -VMName '{vm}'",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            return
        host = provider.runner.execute.__self__  # type: ignore[attr-defined]
        host.vm(vm).switch = ""


# ---- beyond the contract: what is particular to Hyper-V (the fake host only) ----


@pytest.fixture
def hv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vhdx_base: Path
) -> tuple[HyperVProvider, FakeHyperV, MakeSpec]:
    if REAL:
        pytest.skip("fake-host knobs: the fake PowerShell only")
    monkeypatch.setenv("AGENT_SWARM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AGENT_SWARM_HYPERV_SWITCH", raising=False)
    host = FakeHyperV()
    factory = SpecFactory(tmp_path / "vms")
    return (
        fake_provider(host),
        host,
        lambda kind, name: make_vhdx_spec(factory, vhdx_base, kind, name),
    )


def test_each_operation_runs_its_script_with_exact_parameters(
    hv: tuple[HyperVProvider, FakeHyperV, MakeSpec],
) -> None:
    p, host, make = hv
    spec = make("task", "t1")
    vm = f"agent-swarm-{p.tag}-task-t1"
    assert p.vm_name("task", "t1") == vm and len(p.tag) == 6

    def last() -> tuple[str, dict[str, str | bool]]:
        return host.calls[-1]

    p.check_host()
    p.info()
    assert host.calls == [
        ("host-check.ps1", {"StatePath": str(p.home), "SwitchName": "Default Switch"})
    ]  # once per provider
    p.define(spec)
    assert last() == (
        "define.ps1",
        {
            "Name": vm,
            "Notes": f"Managed by agent-swarm; do not edit. kind=task; name=t1; home={p.home}",
            "Disk": str(spec.disk),
            "Seed": str(spec.seed),
            "Cpus": "1",
            "MemoryMiB": "256",
            "SwitchName": "Default Switch",
            "ConfigPath": str(p.home / "hyperv"),
        },
    )
    p.start(spec)
    assert last() == (
        "start.ps1",
        {
            "Name": vm,
            "Disk": str(spec.disk),
            "Seed": str(spec.seed),
            "SwitchName": "Default Switch",
        },
    )
    p.ssh_endpoint(spec)
    assert last() == ("address.ps1", {"Name": vm, "SwitchName": "Default Switch"})
    p.status(spec)
    assert last() == ("status.ps1", {"Name": vm})
    n = len(host.calls)
    p.list_ours()
    assert host.calls[n:] == [("list.ps1", {"Prefix": f"agent-swarm-{p.tag}-"})]
    p.checkpoint(spec, "c1")
    assert last() == ("checkpoint.ps1", {"Name": vm, "Checkpoint": "c1"})
    p.restore(spec, "c1")
    assert host.calls[-2:] == [
        ("checkpoints.ps1", {"Name": vm}),
        ("restore.ps1", {"Name": vm, "Checkpoint": "c1", "Start": True}),
    ]
    p.stop(spec, timeout=7.2)
    assert last() == ("stop.ps1", {"Name": vm, "TimeoutSeconds": "8"})
    p.stop(spec, force=True)
    assert last() == ("stop.ps1", {"Name": vm, "TimeoutSeconds": "0", "Force": True})
    p.delete(spec)
    assert last() == ("remove.ps1", {"Name": vm})
    # Every call: Windows PowerShell, the fixed flags, -File and a shipped script, no -Command.
    for argv in host.argv:
        assert argv[:6] == ["powershell.exe", *FLAGS, "-File"]
        assert "-Command" not in argv and "-EncodedCommand" not in argv


def test_the_vm_as_defined(hv: tuple[HyperVProvider, FakeHyperV, MakeSpec]) -> None:
    p, host, make = hv
    spec = make("project", "p1")
    spec = VMSpec(**{**{f: getattr(spec, f) for f in spec.__slots__}, "memory_mib": 511})
    p.define(spec)
    vm = host.vm(p.vm_name("project", "p1"))
    assert (vm.generation, vm.secure_boot_template) == (2, "MicrosoftUEFICertificateAuthority")
    assert (vm.checkpoint_type, vm.automatic_checkpoints) == ("Standard", False)
    assert (vm.disk, vm.dvd, vm.switch) == (str(spec.disk), str(spec.seed), "Default Switch")
    assert vm.memory_mib == 512  # Hyper-V's 2 MiB steps, rounded up
    assert owner_from_notes(vm.notes) == str(p.home)
    assert vm.path == str(p.home / "hyperv")


def test_notes_round_trip_and_foreign_notes() -> None:
    home = Path("C:/Users/me;x/.agent-swarm")
    assert owner_from_notes(notes_for(home, "task", "t1")) == str(home)
    assert owner_from_notes("a note somebody typed") is None
    assert owner_from_notes(None) is None


def test_a_switch_from_the_environment(
    hv: tuple[HyperVProvider, FakeHyperV, MakeSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    p, host, make = hv
    host.switches["NAT Switch"] = "Internal"
    monkeypatch.setenv("AGENT_SWARM_HYPERV_SWITCH", "NAT Switch")
    p.define(make("task", "t1"))
    assert host.calls[-1][1]["SwitchName"] == "NAT Switch"
    monkeypatch.setenv("AGENT_SWARM_HYPERV_SWITCH", "-Command x")
    with pytest.raises(ConfigError, match="AGENT_SWARM_HYPERV_SWITCH"):
        p.define(make("task", "t2"))


@pytest.mark.parametrize(
    ("knob", "error", "message", "hint"),
    [
        ("rights", ProviderUnavailable, "not in the Hyper-V Administrators group", "S-1-5-32-578"),
        ("vmms", ProviderUnavailable, "not enabled", "Microsoft-Hyper-V -All"),
        ("stopped", ProviderUnavailable, "vmms service is Stopped", "Start-Service vmms"),
        ("module", ProviderUnavailable, "'Get-VM' is not recognized", "Management-PowerShell"),
        ("switch", ProviderUnavailable, "no virtual switch named", "AGENT_SWARM_HYPERV_SWITCH"),
    ],
    ids=["not-elevated", "hyperv-missing", "service-stopped", "module-missing", "no-switch"],
)
def test_a_host_that_cannot_run_vms(
    hv: tuple[HyperVProvider, FakeHyperV, MakeSpec],
    knob: str,
    error: type[Exception],
    message: str,
    hint: str,
) -> None:
    p, host, make = hv
    spec = make("task", "t1")
    if knob == "rights":
        host.rights = False
    elif knob == "vmms":
        host.vmms = None
    elif knob == "stopped":
        host.vmms = "Stopped"
    elif knob == "module":
        host.module = False
    else:
        host.switches.clear()
    with pytest.raises(error, match=message) as exc:
        p.define(spec)
    assert hint in (exc.value.hint or "")  # type: ignore[attr-defined]
    # check_host says the same before anything is made (from host-check.ps1's facts)
    with pytest.raises(ProviderUnavailable) as chk:
        p.check_host()
    assert chk.value.hint
    # status never raises: it reports (a missing switch does not keep it from looking)
    st = p.status(spec)
    if knob == "switch":
        assert st.state is InstanceState.MISSING
    else:
        assert st.state is InstanceState.BROKEN and "cannot ask Hyper-V" in (st.reason or "")


@pytest.mark.parametrize(
    ("category", "error", "hint"),
    [
        ("other", ProviderError, None),
        ("access-denied", ProviderError, "NTFS or ReFS"),
        ("not-found", InstanceNotFound, "doctor --fix"),
        ("invalid-state", InvalidState, None),
        ("exists", AlreadyExists, None),
        ("checkpoint-not-found", NotFound, None),
        ("ambiguous", ProviderError, "Hyper-V Manager"),
        ("not-elevated", ProviderUnavailable, "Hyper-V Administrators"),
    ],
)
def test_each_error_category(
    hv: tuple[HyperVProvider, FakeHyperV, MakeSpec],
    category: str,
    error: type[Exception],
    hint: str | None,
) -> None:
    p, host, make = hv
    spec = make("task", "t1")
    p.define(spec)
    host.fail_next("start.ps1", category, "The operation failed.\r\nDetails: \x1b[31mred")
    with pytest.raises(error) as exc:
        p.start(spec)
    msg = str(exc.value)
    assert "\x1b" not in msg and "\n" not in msg  # one line, nothing a terminal acts on
    assert "The operation failed. Details:" in msg
    if category == "other":
        assert msg.startswith("Hyper-V could not start task t1: ")
    if hint:
        assert hint in (exc.value.hint or "")  # type: ignore[attr-defined]


def test_unknown_vms_and_duplicate_names(hv: tuple[HyperVProvider, FakeHyperV, MakeSpec]) -> None:
    from fakes.hyperv import FakeVM

    p, host, make = hv
    spec = make("task", "t1")
    with pytest.raises(InstanceNotFound, match="no VM named agent-swarm-"):
        p.start(spec)
    p.define(spec)
    host.vms.append(FakeVM(p.vm_name("task", "t1")))  # an imported copy, same name
    st = p.status(spec)
    assert st.state is InstanceState.BROKEN and "2 VMs" in (st.reason or "")
    assert p.list_ours()[("task", "t1")].state is InstanceState.BROKEN
    with pytest.raises(ProviderError, match="2 VMs") as exc:
        p.start(spec)
    assert "Hyper-V Manager" in (exc.value.hint or "")


def test_states_hyperv_reports(hv: tuple[HyperVProvider, FakeHyperV, MakeSpec]) -> None:
    p, host, make = hv
    spec = make("task", "t1")
    p.define(spec)
    vm = host.vm(p.vm_name("task", "t1"))
    for hv_state, ours in [
        ("Saved", InstanceState.STOPPED),
        ("Paused", InstanceState.PAUSED),
        ("Starting", InstanceState.STARTING),
        ("Stopping", InstanceState.STOPPING),
        ("Saving", InstanceState.STOPPING),
    ]:
        vm.state = hv_state
        assert p.status(spec).state is ours, hv_state
        assert p.list_ours()[("task", "t1")].state is ours
    vm.state, vm.status = "RunningCritical", "The virtual machine's storage is missing"
    st = p.status(spec)
    assert st.state is InstanceState.BROKEN
    assert "RunningCritical" in (st.reason or "") and "storage is missing" in (st.reason or "")
    vm.state = "Saved"
    p.start(spec)  # resumes from its saved state
    assert vm.state == "Running"
    vm.state = "Paused"
    p.start(spec)
    assert vm.state == "Running"
    vm.state = "Starting"
    with pytest.raises(InvalidState, match="try again"):
        p.start(spec)


def test_list_ours_is_one_call_for_many_vms(
    hv: tuple[HyperVProvider, FakeHyperV, MakeSpec],
) -> None:
    from fakes.hyperv import FakeVM

    p, host, _ = hv
    for i in range(100):
        host.vms.append(FakeVM(f"{p.prefix}task-t{i}", state="Running" if i % 2 else "Off"))
    host.vms.append(FakeVM("agent-swarm-000000-task-t1"))  # another state directory's
    host.vms.append(FakeVM("my own VM"))
    n = len(host.calls)
    ours = p.list_ours()
    assert host.scripts_called()[n:] == ["list.ps1"]
    assert len(ours) == 100
    assert ours[("task", "t3")].state is InstanceState.RUNNING
    assert ours[("task", "t4")].label == f"Hyper-V VM {p.prefix}task-t4"


def test_addresses_kvp_then_the_neighbour_cache(
    hv: tuple[HyperVProvider, FakeHyperV, MakeSpec],
) -> None:
    p, host, make = hv
    spec = make("task", "t1")
    p.define(spec)
    with pytest.raises(InvalidState, match="not running"):
        p.ssh_endpoint(spec)
    p.start(spec)
    host.address_delay = 2
    for _ in range(2):
        with pytest.raises(Timeout, match="no address yet"):
            p.ssh_endpoint(spec)
    ep = p.ssh_endpoint(spec)
    assert (ep.host, ep.port, ep.user) == ("198.51.100.1", 22, "worker")

    # A guest without hv_kvp_daemon: the host's ARP cache knows it by its MAC.
    other = make("task", "t2")
    host.kvp = False
    host.address_delay = 0
    p.define(other)
    p.start(other)
    ep = p.ssh_endpoint(other)
    assert ep.host == "198.51.100.2"
    mac = host.vm(p.vm_name("task", "t2")).mac
    assert host.neighbors["-".join(mac[i : i + 2] for i in range(0, 12, 2))] == ep.host


def test_address_choice() -> None:
    from agent_swarm.providers.hyperv.provider import pick_address

    assert pick_address(["fe80::1", "169.254.3.4", "203.0.113.5"], []) == "203.0.113.5"
    assert pick_address([], ["0.0.0.0", "127.0.0.1", "224.0.0.1", "203.0.113.6"]) == "203.0.113.6"
    assert pick_address(["198.51.100.9"], ["203.0.113.6"]) == "198.51.100.9"  # KVP first
    assert pick_address(["1.2.3.4; rm -rf /", 7, None], "x") is None


def test_runtime_problem_and_repair(hv: tuple[HyperVProvider, FakeHyperV, MakeSpec]) -> None:
    p, host, make = hv
    spec = make("task", "t1")
    p.define(spec)
    p.start(spec)
    vm = host.vm(p.vm_name("task", "t1"))
    vm.switch = "Some Other Switch"
    assert p.runtime_problem(spec) == (
        "its network adapter is on the switch 'Some Other Switch', not 'Default Switch'"
    )
    p.start(spec)
    assert vm.switch == "Default Switch" and p.runtime_problem(spec) is None
    vm.adapters = 0
    assert p.runtime_problem(spec) == "it has no network adapter"


def test_checkpoints_keep_hyperv_disk_chain(
    hv: tuple[HyperVProvider, FakeHyperV, MakeSpec],
) -> None:
    """After a checkpoint the VM writes into an .avhdx: define and start must not point it
    back at the disk file (that would drop everything written since)."""
    p, host, make = hv
    spec = make("task", "t1")
    p.define(spec)
    p.checkpoint(spec, "c1")
    vm = host.vm(p.vm_name("task", "t1"))
    assert vm.disk.endswith(".avhdx")
    current = vm.disk
    p.define(spec)
    p.start(spec)
    assert vm.disk == current
    p.stop(spec, force=True)
    # Without checkpoints a start attaches the disk again (Hyper-V grants the VM access to a
    # file replaced at the same path, as sealing does).
    other = make("task", "t2")
    p.define(other)
    vm2 = host.vm(p.vm_name("task", "t2"))
    grants = vm2.disk_grants
    p.start(other)
    assert vm2.disk_grants == grants + 1


def test_checkpoint_of_a_paused_vm_restores_paused(
    hv: tuple[HyperVProvider, FakeHyperV, MakeSpec],
) -> None:
    p, host, make = hv
    spec = make("task", "t1")
    p.define(spec)
    p.start(spec)
    vm = host.vm(p.vm_name("task", "t1"))
    vm.state = "Paused"
    p.checkpoint(spec, "held")
    assert [c["state"] for c in p.list_checkpoints(spec)] == ["paused"]
    p.stop(spec, force=True)
    p.restore(spec, "held")
    assert host.calls[-1][1] == {
        "Name": vm.name,
        "Checkpoint": "held",
        "Start": True,
        "Pause": True,
    }
    assert p.status(spec).state is InstanceState.PAUSED


def test_checkpoints_made_elsewhere_and_projects(
    hv: tuple[HyperVProvider, FakeHyperV, MakeSpec],
) -> None:
    from fakes.hyperv import FakeSnapshot

    p, host, make = hv
    spec = make("task", "t1")
    p.define(spec)
    vm = host.vm(p.vm_name("task", "t1"))
    vm.snapshots.append(FakeSnapshot("id-x", "by-hand", 1_700_000_000_000, "Off", vm.disk))
    assert p.list_checkpoints(spec) == [
        {"name": "by-hand", "created": 1_700_000_000.0, "state": "unknown"}
    ]
    p.restore(spec, "by-hand")  # no record: restored as Hyper-V leaves it
    assert "Start" not in host.calls[-1][1]
    # A checkpoint removed in Hyper-V Manager: its record goes at the next listing.
    p.checkpoint(spec, "mine")
    meta = p.home / "hyperv" / vm.name / "checkpoints.json"
    assert [v["name"] for v in json.loads(meta.read_text()).values()] == ["mine"]
    vm.snapshots = [s for s in vm.snapshots if s.name != "mine"]
    assert [c["name"] for c in p.list_checkpoints(spec)] == ["by-hand"]
    assert json.loads(meta.read_text()) == {}

    project = make("project", "p1")
    p.define(project)
    with pytest.raises(UnsupportedByProvider, match="checkpoints of a project") as exc:
        p.checkpoint(project, "c1")
    assert ".avhdx" in (exc.value.hint or "")
    assert p.list_checkpoints(project) == []


def test_names_and_values_are_checked_before_powershell_runs(
    hv: tuple[HyperVProvider, FakeHyperV, MakeSpec],
) -> None:
    p, host, make = hv
    spec = make("task", "t1")
    bad = VMSpec(**{**{f: getattr(spec, f) for f in spec.__slots__}, "name": "x'; Stop-VM *"})
    n = len(host.calls)
    with pytest.raises(InvalidName):
        p.define(bad)
    with pytest.raises(InvalidName):
        p.checkpoint(spec, "-Force")
    with pytest.raises(ProviderError, match="weird"):
        p.vm_name("weird", "t1")
    assert len(host.calls) == n and len(host.argv) == n  # nothing ran


def test_timeouts_and_unreadable_answers(
    hv: tuple[HyperVProvider, FakeHyperV, MakeSpec],
) -> None:
    from agent_swarm.providers.hyperv.runner import FRAME_END, FRAME_START

    p, host, make = hv
    spec = make("task", "t1")
    p.define(spec)
    host.hang.add("start.ps1")
    with pytest.raises(Timeout, match=r"did not start task t1 within 300 s") as exc:
        p.start(spec)
    assert "Hyper-V Manager" in (exc.value.hint or "")
    host.hang.clear()

    host.raw["start.ps1"] = f"{FRAME_START}\n{{not json\n{FRAME_END}\n".encode()
    with pytest.raises(ProviderError, match=r"unreadable answer from start\.ps1") as exc2:
        p.start(spec)
    assert "please report" in (exc2.value.hint or "")
    frame = f'{FRAME_START}\n{{"ok":true,"result":{{}}}}\n{FRAME_END}\n'
    host.raw["start.ps1"] = (frame * 2).encode()
    with pytest.raises(ProviderError, match="2 frame starts"):
        p.start(spec)
    host.raw["start.ps1"] = b"Get-VM : something happened\r\n"
    with pytest.raises(ProviderError, match="no answer"):
        p.start(spec)


def test_the_probes_host_facts_are_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the system's PowerShell, the provider's check_host reuses the answer the probe
    got when it chose the provider: one host-check.ps1 run per command, not two."""
    from agent_swarm.providers.hyperv import probe as hprobe

    monkeypatch.setenv("AGENT_SWARM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AGENT_SWARM_HYPERV_SWITCH", raising=False)
    p = HyperVProvider()
    facts = FakeHyperV()._host_check({"StatePath": str(p.home), "SwitchName": "Default Switch"})
    monkeypatch.setitem(hprobe._HOST_FACTS, (p.home, "Default Switch"), facts)
    p.check_host()  # no PowerShell exists here: it would fail if it ran one
    assert p.info().version == "Hyper-V on Windows 11 Pro 23H2 (build 22631.3880)"
