"""The fake provider's own behaviour beyond the contract: its knobs (capabilities, injected
failures), state that outlives a process, the dynamic address, the guest channel, and the
helpers workflow tests use (vm_state, set_vm_state, fake_env)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent_swarm.errors import (
    InvalidState,
    ProviderError,
    ProviderUnavailable,
    SSHError,
    Timeout,
    UnsupportedByProvider,
)
from agent_swarm.models import InstanceState, SSHEndpoint, VMSpec
from agent_swarm.providers import get_provider
from agent_swarm.providers.base import Capabilities
from fakes.provider import (
    CAPS_ENV,
    DEFAULT_MACHINE,
    EMULATOR_ENV,
    FAIL_ENV,
    MACHINES_ENV,
    NOTICE_ENV,
    RAM_MARK,
    TESTS_DIR,
    FakeProvider,
    caps_from_env,
    dynamic_port,
    fake_env,
    set_vm_state,
    vm_state,
)
from providers.contract import SpecFactory


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("AGENT_SWARM_HOME", str(h))
    for var in (CAPS_ENV, FAIL_ENV, NOTICE_ENV, EMULATOR_ENV, MACHINES_ENV):
        monkeypatch.delenv(var, raising=False)
    return h


@pytest.fixture
def specs(tmp_path: Path) -> SpecFactory:
    return SpecFactory(tmp_path / "vms")


def spec_of(specs: SpecFactory, name: str, kind: str = "task") -> VMSpec:
    return specs(kind, name, "qcow2")


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---- capabilities ----
def test_default_capabilities(home: Path) -> None:
    caps = FakeProvider().capabilities
    assert (caps.disk_format, caps.snapshots, caps.memory_snapshots) == ("qcow2", True, True)
    assert not caps.dynamic_address and caps.warm_clones


def test_capabilities_from_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CAPS_ENV, "disk_format=raw,dynamic_address=1,warm_clones=0,networks=nat")
    p = FakeProvider()
    assert p.capabilities == Capabilities(
        disk_format="raw",
        snapshots=True,
        memory_snapshots=True,
        dynamic_address=True,
        warm_clones=False,
        networks=("nat",),
        host_needs=FakeProvider.capabilities.host_needs,
    )
    assert p.info().capabilities == p.capabilities
    assert FakeProvider.capabilities == caps_from_env("")  # the class keeps the defaults


@pytest.mark.parametrize("bad", ["nope=1", "snapshots=maybe", "disk_format"])
def test_bad_capabilities_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=CAPS_ENV):
        caps_from_env(bad)


# ---- define ----
def test_define_refuses_missing_files_and_unknown_networks(
    home: Path, specs: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    spec.seed.unlink()
    with pytest.raises(ProviderError, match="no seed"):
        p.define(spec)
    spec = spec_of(specs, "t2")
    spec.disk.unlink()
    with pytest.raises(ProviderError, match="no disk"):
        p.define(spec)
    monkeypatch.setenv(CAPS_ENV, "networks=user")
    spec = dataclasses.replace(spec_of(specs, "t3"), network="nat")
    with pytest.raises(ProviderError, match="network 'nat'"):
        FakeProvider().define(spec)
    assert p.list_ours() == {}


def test_define_records_the_spec_and_redefine_keeps_the_power_state(
    home: Path, specs: SpecFactory
) -> None:
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    p.define(spec)
    p.start(spec)
    p.define(dataclasses.replace(spec, memory_mib=512))
    st = vm_state(home, "task", "t1")
    assert st is not None
    assert st["spec"]["memory_mib"] == 512 and st["spec"]["disk"] == str(spec.disk)
    assert (st["state"], st["defines"], st["boots"]) == ("running", 2, 1)
    assert p.owner_of("task", "t1") == str(home)


# ---- lifecycle bookkeeping ----
def test_boots_are_counted_and_start_on_a_running_vm_is_no_boot(
    home: Path, specs: SpecFactory
) -> None:
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    p.define(spec)
    for _ in range(2):
        p.start(spec)
        p.start(spec)
        p.stop(spec, force=True)
    st = vm_state(home, "task", "t1")
    assert st is not None and (st["boots"], st["stops"]) == (2, 2)
    assert st["last_stop_forced"] is True


def test_runtime_problem_and_repair(home: Path, specs: SpecFactory) -> None:
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    p.define(spec)
    set_vm_state(home, "task", "t1", network_dead=True)
    assert p.runtime_problem(spec) is None  # a stopped VM has no runtime problem
    p.start(spec)  # a boot brings the network up
    assert p.runtime_problem(spec) is None
    set_vm_state(home, "task", "t1", network_dead=True)
    assert "network" in (p.runtime_problem(spec) or "")
    p.start(spec)
    assert p.runtime_problem(spec) is None
    st = vm_state(home, "task", "t1")
    assert st is not None and (st["boots"], st["network_repairs"]) == (1, 1)


def test_broken_state_set_by_a_test(home: Path, specs: SpecFactory) -> None:
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    p.define(spec)
    set_vm_state(home, "task", "t1", state="broken", broken_reason="disk vanished")
    st = p.status(spec)
    assert (st.state, st.reason) == (InstanceState.BROKEN, "disk vanished")
    assert p.list_ours()[("task", "t1")] == st
    with pytest.raises(LookupError):
        set_vm_state(home, "task", "nope", state="running")


def test_status_of_a_corrupt_record_is_broken(home: Path, specs: SpecFactory) -> None:
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    p.define(spec)
    (home / "fake-hypervisor" / "task-t1.json").write_text("{not json")
    assert p.status(spec).state is InstanceState.BROKEN


# ---- failure injection ----
def test_injected_failures(home: Path, specs: SpecFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    p = FakeProvider()
    bad, good = spec_of(specs, "bad"), spec_of(specs, "good")
    monkeypatch.setenv(FAIL_ENV, "define:bad,start:good")
    with pytest.raises(ProviderError, match="injected failure: define of task 'bad'"):
        p.define(bad)
    p.define(good)
    with pytest.raises(ProviderError, match="injected failure: start"):
        p.start(good)
    assert p.status(good).state is InstanceState.STOPPED
    monkeypatch.delenv(FAIL_ENV)
    p.start(good)
    monkeypatch.setenv(FAIL_ENV, "guest:*,delete:*")
    with pytest.raises(SSHError, match="injected"):
        p.guest_session(good).run("true", 5)
    with pytest.raises(ProviderError):
        p.delete(good)
    assert p.status(good).state is InstanceState.RUNNING


def test_probe_can_be_made_unavailable(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SWARM_TEST_PROVIDERS", "fake=fakes.provider:FakeProvider")
    assert isinstance(get_provider("fake"), FakeProvider)
    monkeypatch.setenv(FAIL_ENV, "probe:*")
    assert not FakeProvider.probe().available
    with pytest.raises(ProviderUnavailable, match="fake provider cannot run"):
        get_provider("fake")


def test_startup_notice(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert FakeProvider().startup_notice() is None
    monkeypatch.setenv(NOTICE_ENV, "notice: fake emulation")
    assert FakeProvider().startup_notice() == "notice: fake emulation"


# ---- access ----
def test_static_endpoint_is_the_specs_loopback_port(home: Path, specs: SpecFactory) -> None:
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    assert p.ssh_endpoint(spec) == SSHEndpoint("127.0.0.1", spec.ssh_port, "worker")


def test_dynamic_address_needs_a_second_poll_after_each_start(
    home: Path, specs: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CAPS_ENV, "dynamic_address=1")
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    with pytest.raises(InvalidState):
        p.ssh_endpoint(spec)  # no such VM
    p.define(spec)
    with pytest.raises(Timeout, match="no address yet"):
        p.ssh_endpoint(spec)  # stopped: no lease
    for _boot in range(2):
        p.start(spec)
        with pytest.raises(Timeout, match="no address yet"):
            p.ssh_endpoint(spec)
        want = SSHEndpoint("127.0.0.1", dynamic_port("task", "t1"), "worker")
        assert p.ssh_endpoint(spec) == want
        assert p.ssh_endpoint(spec) == want
        p.stop(spec)
    st = vm_state(home, "task", "t1")
    assert st is not None and st["address_polls"] == 7


def test_guest_session(home: Path, specs: SpecFactory) -> None:
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    p.define(spec)
    g = p.guest_session(spec)
    with pytest.raises(SSHError, match="not running"):
        g.run("cloud-init status --wait", 10)
    p.start(spec)
    assert g.run("cloud-init status --wait --long", 10) == (0, "status: done\n", "")
    assert g.run("sudo rm -f /etc/machine-id && sudo systemd-machine-id-setup", 10) == (0, "", "")
    assert g.run("echo hi > /tmp/x", 10) == (0, "", "")
    st = vm_state(home, "task", "t1")
    assert st is not None
    assert (st["identity_reset"], st["identity_resets"]) == (True, 1)
    assert st["commands"] == ["echo hi > /tmp/x"]
    set_vm_state(home, "task", "t1", cloud_init="error")
    assert g.run("cloud-init status", 10) == (1, "status: error\n", "")
    g.close()


def test_checkpoint_of_a_running_vm_needs_memory_snapshots(
    home: Path, specs: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CAPS_ENV, "memory_snapshots=0")
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    p.define(spec)
    p.start(spec)
    with pytest.raises(UnsupportedByProvider):
        p.checkpoint(spec, "c1")
    p.stop(spec)
    p.checkpoint(spec, "c1")
    assert [c["state"] for c in p.list_checkpoints(spec)] == ["shutoff"]


# ---- warm templates and clones ----
MAC = "52:54:00:aa:bb:cc"


def template_of(specs: SpecFactory, tmp_path: Path) -> VMSpec:
    """A warm template's VM: its RAM in a file it maps shared."""
    spec = spec_of(specs, "p.1", kind="warm")
    ram = tmp_path / "ram"
    with open(ram, "wb") as f:
        f.truncate(spec.memory_mib << 20)
    return dataclasses.replace(
        spec, memory_file=ram, memory_shared=True, mac=MAC, machine=DEFAULT_MACHINE
    )


def saved_template(p: FakeProvider, specs: SpecFactory, tmp_path: Path) -> tuple[VMSpec, Path]:
    t = template_of(specs, tmp_path)
    p.define(t)
    p.start(t)
    state = tmp_path / "state"
    p.save_running_state(t, state)
    return t, state


def clone_of(specs: SpecFactory, t: VMSpec, name: str = "t1", **changes: object) -> VMSpec:
    spec = dataclasses.replace(
        spec_of(specs, name),
        memory_file=t.memory_file,
        memory_shared=False,
        incoming=True,
        mac=t.mac,
        machine=t.machine,
    )
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def test_warm_fingerprint(home: Path, specs: SpecFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    fp = p.warm_fingerprint(spec)
    assert (fp["emulator"], fp["machine"]) == ("fake 1", DEFAULT_MACHINE)
    assert p.warm_fingerprint(dataclasses.replace(spec, machine=DEFAULT_MACHINE)) == fp
    assert p.warm_fingerprint(dataclasses.replace(spec, memory_mib=512))["devices"] != fp["devices"]
    assert p.warm_fingerprint(dataclasses.replace(spec, machine="pc-9"))["machine"] == (
        "unsupported:pc-9"
    )
    monkeypatch.setenv(EMULATOR_ENV, "fake 2")
    assert p.warm_fingerprint(spec)["emulator"] == "fake 2"
    monkeypatch.setenv(MACHINES_ENV, "fake-machine-2+fake-machine-1")
    assert p.warm_fingerprint(spec)["machine"] == "fake-machine-2"  # the default: the first
    assert p.warm_fingerprint(dataclasses.replace(spec, machine=DEFAULT_MACHINE))["machine"] == (
        DEFAULT_MACHINE
    )
    monkeypatch.setenv(CAPS_ENV, "warm_clones=0")
    with pytest.raises(UnsupportedByProvider):
        FakeProvider().warm_fingerprint(spec)


def test_save_running_state_needs_a_running_vm_with_shared_ram(
    home: Path, specs: SpecFactory, tmp_path: Path
) -> None:
    p = FakeProvider()
    t = template_of(specs, tmp_path)
    state = tmp_path / "state"
    p.define(dataclasses.replace(t, memory_shared=False))
    p.start(t)
    with pytest.raises(ProviderError, match="shared file"):
        p.save_running_state(t, state)
    p.stop(t)
    p.define(t)
    with pytest.raises(ProviderError, match="not running"):
        p.save_running_state(t, state)
    assert not state.exists()
    with pytest.raises(ProviderError, match="no memory file"):
        p.define(dataclasses.replace(t, memory_file=tmp_path / "nope"))
    p.start(t)
    p.save_running_state(t, state)
    st = vm_state(home, "warm", "p.1")
    assert st is not None and (st["state"], st["saves"]) == ("stopped", 1)
    saved = json.loads(state.read_text())
    assert (saved["mac"], saved["machine"], saved["memory_mib"]) == (MAC, DEFAULT_MACHINE, 256)
    assert saved["guest"]["hostname"] == "p.1"
    assert t.memory_file is not None
    assert t.memory_file.read_bytes().startswith(RAM_MARK + b"p.1")


def test_resume_refuses_what_qemu_would(
    home: Path, specs: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = FakeProvider()
    t, state = saved_template(p, specs, tmp_path)
    bad = {
        "shared": (dict(memory_shared=True), "maps its RAM file shared"),
        "cold": (dict(incoming=False), "not defined to wait for a saved state"),
        "mac": (dict(mac="52:54:00:00:00:01"), "its mac"),
        "cpus": (dict(cpus=2), "its cpus"),
        "machine": (dict(machine="fake-machine-2"), "machine type"),
    }
    monkeypatch.setenv(MACHINES_ENV, "fake-machine-1+fake-machine-2")
    for key, (changes, message) in bad.items():
        c = clone_of(specs, t, f"bad-{key}", **changes)
        p.define(c)
        with pytest.raises(ProviderError, match=message):
            p.resume_from_state(c, state)
        assert p.status(c).state is InstanceState.STOPPED, key
    c = clone_of(specs, t)
    p.define(c)
    with pytest.raises(ProviderError, match="cannot boot"):
        p.start(c)  # waits for a state: no boot
    monkeypatch.setenv(FAIL_ENV, "resume:t1")
    with pytest.raises(ProviderError, match="injected failure: resume"):
        p.resume_from_state(c, state)
    assert p.status(c).state is InstanceState.STOPPED
    monkeypatch.delenv(FAIL_ENV)
    p.resume_from_state(c, state)
    st = vm_state(home, "task", "t1")
    assert st is not None
    assert (st["state"], st["boots"], st["resumes"]) == ("running", 0, 1)
    assert st["resumed_from"] == str(state) and st["resumed_spec"]["incoming"] is True
    assert st["hostname"] == "p.1" and st["inherited"]["hostname"] == "p.1"
    with pytest.raises(ProviderError, match="is running"):
        p.resume_from_state(c, state)
    # Redefined as an ordinary VM, it boots again after a stop.
    p.stop(c)
    p.define(dataclasses.replace(c, memory_file=None, incoming=False))
    p.start(c)
    assert vm_state(home, "task", "t1")["boots"] == 1  # type: ignore[index]


def test_guest_agent_and_the_identity_push(
    home: Path, specs: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_swarm.guest import new_host_key
    from agent_swarm.ops.warm import IDENTITY_PUSH, Warm, encode_payload, parse_report

    p = FakeProvider()
    t, state = saved_template(p, specs, tmp_path)
    c = clone_of(specs, t)
    p.define(c)
    agent = p.guest_agent(c)
    assert not agent.ping(1)  # not running
    p.resume_from_state(c, state)
    assert agent.ping(1)
    agent.set_time()
    assert agent.exec(["/bin/true"], b"", 5) == (0, b"", b"")
    host = new_host_key("task", "t1")
    warm = object.__new__(Warm)  # push_identity needs no core
    warm.push_identity(agent, c, host, "task t1")
    st = vm_state(home, "task", "t1")
    assert st is not None
    assert (st["hostname"], st["host_pub"]) == ("t1", host.public_openssh)
    assert st["machine_id"] != st["inherited"]["machine_id"]
    assert (st["identity_pushes"], st["rng_reseeded"]) == (1, 1)
    assert st["clock_sets"] >= 1 and abs(st["clock"] - time.time()) < 600
    assert st["argv_has_secret"] is False and st["stdin_has_private_key"] is True
    assert st["agent_commands"] == [["/bin/true"]]
    # A secret in argv is seen.
    payload = encode_payload("t1", "1" * 32, "00" * 64, host.public_openssh, host.private_openssh)
    argv = ["/usr/bin/perl", "-e", IDENTITY_PUSH, host.private_openssh]
    rc, out, _ = agent.exec(argv, payload, 5)
    assert rc == 0 and parse_report(out)["machine_id"] == "1" * 32
    assert vm_state(home, "task", "t1")["argv_has_secret"] is True  # type: ignore[index]
    # A guest that does not take it: the core's check refuses the clone.
    for knob in ("env", "state"):
        if knob == "env":
            monkeypatch.setenv(FAIL_ENV, "identity:t1")
        else:
            monkeypatch.delenv(FAIL_ENV)
            set_vm_state(home, "task", "t1", identity_sticks=False)
        with pytest.raises(ProviderError, match="did not take its new identity"):
            warm.push_identity(agent, c, new_host_key("task", "t1"), "task t1")
        assert vm_state(home, "task", "t1")["host_pub"] == host.public_openssh  # type: ignore[index]
    # A bad payload fails like the script would.
    rc, _, err = agent.exec(["/usr/bin/perl", "-e", IDENTITY_PUSH], b"{}", 5)
    assert rc != 0 and err
    monkeypatch.setenv(FAIL_ENV, "agent:t1")
    assert not agent.ping(1)
    with pytest.raises(ProviderError, match="does not answer"):
        agent.exec(["/bin/true"], b"", 5)


def test_identity_sticks_is_saved_with_the_template(
    home: Path, specs: SpecFactory, tmp_path: Path
) -> None:
    p = FakeProvider()
    t = template_of(specs, tmp_path)
    p.define(t)
    p.start(t)
    set_vm_state(home, "warm", "p.1", identity_sticks=False)
    p.save_running_state(t, tmp_path / "state")
    c = clone_of(specs, t)
    p.define(c)
    p.resume_from_state(c, tmp_path / "state")
    assert vm_state(home, "task", "t1")["identity_sticks"] is False  # type: ignore[index]


# ---- forks: a running VM saved with its RAM, running on ----
def fork_of(specs: SpecFactory, name: str, **changes: object) -> VMSpec:
    """A fork's VM: waits for a state, its RAM in that state (no memory file)."""
    return dataclasses.replace(spec_of(specs, name), incoming=True, **changes)  # type: ignore[arg-type]


def running_source(p: FakeProvider, specs: SpecFactory, home: Path) -> VMSpec:
    src = spec_of(specs, "src")
    p.define(src)
    p.start(src)
    set_vm_state(
        home, "task", "src", memory={"tmpfs": "work in progress"}, host_pub="ssh-ed25519 A"
    )
    return src


def test_save_with_the_ram_while_paused_then_running_on(
    home: Path, specs: SpecFactory, tmp_path: Path
) -> None:
    p = FakeProvider()
    src = running_source(p, specs, home)
    state = tmp_path / "fork.state"
    seen: list[object] = []

    def while_paused() -> None:
        seen.append(p.status(src).state)
        seen.append(p.guest_agent(src).ping(1))  # a paused guest does not answer

    # A cold-booted VM maps no shared RAM file: a warm template's save is refused, unchanged.
    with pytest.raises(ProviderError, match="shared file"):
        p.save_running_state(src, state)
    assert p.status(src).state is InstanceState.RUNNING and not state.exists()
    paused = p.save_running_state(
        src, state, shared_memory=False, keep_running=True, while_paused=while_paused
    )
    assert isinstance(paused, float) and paused >= 0
    assert seen == [InstanceState.PAUSED, False]
    st = vm_state(home, "task", "src")
    assert st is not None and st["state"] == "running"
    assert (st["pauses"], st["unpauses"], st["saves"], st["boots"]) == (1, 1, 1, 1)
    assert st["while_paused_ran"] == 1 and st["saved_shared_memory"] == [False]
    assert st["memory"] == {"tmpfs": "work in progress"}  # running on, its RAM kept
    assert state.stat().st_mode & 0o777 == 0o600
    saved = json.loads(state.read_text())
    assert (saved["ram_included"], saved["memory_backend"]) == (True, "ram")
    assert saved["memory"] == {"tmpfs": "work in progress"}
    assert saved["guest"] == {
        "hostname": "src",
        "machine_id": st["machine_id"],
        "host_pub": "ssh-ed25519 A",
    }

    # A fork resumes from it: its RAM (and so the guest's identity) from the state alone.
    f = fork_of(specs, "f1")
    p.define(f)
    with pytest.raises(ProviderError, match="x-ignore-shared"):
        p.resume_from_state(f, state)  # shared_memory=True: QEMU refuses the state
    assert p.status(f).state is InstanceState.STOPPED
    p.resume_from_state(f, state, shared_memory=False)
    fs = vm_state(home, "task", "f1")
    assert fs is not None and (fs["state"], fs["boots"], fs["resumes"]) == ("running", 0, 1)
    assert fs["resumed_shared_memory"] is False and fs["resumed_spec"]["memory_file"] is None
    assert fs["memory"] == {"tmpfs": "work in progress"}
    assert (fs["hostname"], fs["host_pub"]) == ("src", "ssh-ed25519 A")
    # A powered-off guest forgets its RAM; a boot starts with none.
    p.stop(f)
    assert vm_state(home, "task", "f1")["memory"] == {}  # type: ignore[index]


def test_a_forks_ram_layout_must_be_the_running_vms(
    home: Path, specs: SpecFactory, tmp_path: Path
) -> None:
    """QEMU's RAM blocks: a VM that runs on a memory-backend-file (a warm clone) loads only
    into one that has one too (mapped privately), and a cold-booted one only into one that has
    none (else "Unknown ramblock")."""
    p = FakeProvider()
    t, tstate = saved_template(p, specs, tmp_path)
    clone = clone_of(specs, t, "clone")
    p.define(clone)
    p.resume_from_state(clone, tstate)
    set_vm_state(home, "task", "clone", memory={"x": 1})
    # Redefined as an ordinary VM, it still runs with the template's RAM mapped.
    p.define(dataclasses.replace(clone, memory_file=None, incoming=False))
    state = tmp_path / "clone.state"
    p.save_running_state(clone, state, shared_memory=False, keep_running=True)
    assert json.loads(state.read_text())["memory_backend"] == "file"
    bad = fork_of(specs, "no-ram-file", mac=t.mac, machine=t.machine)
    p.define(bad)
    with pytest.raises(ProviderError, match="Unknown ramblock"):
        p.resume_from_state(bad, state, shared_memory=False)
    shared = fork_of(specs, "shared", mac=t.mac, machine=t.machine)
    shared = dataclasses.replace(shared, memory_file=t.memory_file, memory_shared=True)
    p.define(shared)
    with pytest.raises(ProviderError, match="maps its RAM file shared"):
        p.resume_from_state(shared, state, shared_memory=False)
    good = dataclasses.replace(shared, name="good", memory_shared=False)
    p.define(good)
    p.resume_from_state(good, state, shared_memory=False)
    gs = vm_state(home, "task", "good")
    assert gs is not None and gs["memory"] == {"x": 1}  # from the state, not the template's RAM
    assert gs["inherited"]["hostname"] == "p.1"
    # After a cold boot the clone runs on its default RAM: the template's file is wrong now.
    p.stop(clone)
    p.start(clone)
    p.save_running_state(clone, state, shared_memory=False, keep_running=True)
    assert json.loads(state.read_text())["memory_backend"] == "ram"
    again = dataclasses.replace(good, name="again")
    p.define(again)
    with pytest.raises(ProviderError, match="Unknown ramblock"):
        p.resume_from_state(again, state, shared_memory=False)
    # A template's clone still gets the template's memory from its RAM file.
    c2 = clone_of(specs, t, "c2")
    p.define(c2)
    p.resume_from_state(c2, tstate)
    assert vm_state(home, "task", "c2")["memory"] == {}  # type: ignore[index]


def test_while_paused_failing_and_a_plain_save(
    home: Path, specs: SpecFactory, tmp_path: Path
) -> None:
    p = FakeProvider()
    src = running_source(p, specs, home)

    def boom() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        p.save_running_state(
            src, tmp_path / "s", shared_memory=False, keep_running=True, while_paused=boom
        )
    st = vm_state(home, "task", "src")
    assert st is not None and st["state"] == "running"  # running again whatever happened
    assert (st["pauses"], st["unpauses"], st.get("saves", 0)) == (1, 1, 0)
    # Without keep_running it is powered off after the save (or its failure).
    with pytest.raises(OSError, match="disk full"):
        p.save_running_state(src, tmp_path / "s", shared_memory=False, while_paused=boom)
    assert p.status(src).state is InstanceState.STOPPED
    p.start(src)
    assert p.save_running_state(src, tmp_path / "s", shared_memory=False) >= 0
    st = vm_state(home, "task", "src")
    assert st is not None and (st["state"], st["saves"], st["boots"]) == ("stopped", 1, 2)


def test_a_source_left_paused_and_start_resuming_it(
    home: Path, specs: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = FakeProvider()
    src = running_source(p, specs, home)
    monkeypatch.setenv(FAIL_ENV, "save-stuck:src")
    ran: list[int] = []
    with pytest.raises(ProviderError, match="save-stuck"):
        p.save_running_state(
            src,
            tmp_path / "s",
            shared_memory=False,
            keep_running=True,
            while_paused=lambda: ran.append(1),
        )
    assert ran == []
    assert p.status(src).state is InstanceState.PAUSED
    assert p.list_ours()[("task", "src")].state is InstanceState.PAUSED
    with pytest.raises(SSHError, match="not running"):
        p.guest_session(src).run("true", 5)
    monkeypatch.delenv(FAIL_ENV)
    p.start(src)  # resumes it: no boot, its RAM kept
    st = vm_state(home, "task", "src")
    assert st is not None and st["state"] == "running"
    assert (st["boots"], st["unpauses"], st["memory"]) == (1, 1, {"tmpfs": "work in progress"})
    # A paused VM can be stopped too.
    set_vm_state(home, "task", "src", state="paused")
    p.stop(src)
    assert p.status(src).state is InstanceState.STOPPED


def test_save_crash_kills_the_process_with_the_vm_paused(
    home: Path, specs: SpecFactory, tmp_path: Path
) -> None:
    p = FakeProvider()
    src = running_source(p, specs, home)
    code = f"""
        from pathlib import Path
        from agent_swarm.models import VMSpec
        from fakes.provider import FakeProvider
        spec = VMSpec("task", "src", 1, 256, Path({str(src.disk)!r}), Path({str(src.seed)!r}),
                      Path("serial.log"), {src.ssh_port})
        FakeProvider().save_running_state(
            spec, Path({str(tmp_path / "s")!r}), shared_memory=False, keep_running=True,
            while_paused=lambda: print("copied", flush=True),
        )
        print("survived")
    """
    r = run_python(code, {**fake_env(home), FAIL_ENV: "save-crash:src"})
    assert r.returncode == -9, (r.returncode, r.stderr)
    assert r.stdout == "copied\n"
    assert p.status(src).state is InstanceState.PAUSED


def test_a_guest_that_writes_its_disk_when_it_runs_again(
    home: Path, specs: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fakes.provider import GUEST_WRITE_OFFSET, GUEST_WRITE_PATTERN

    monkeypatch.setenv(CAPS_ENV, "disk_format=raw")
    p = FakeProvider()
    src = specs("task", "src", "raw")
    p.define(src)
    p.start(src)
    set_vm_state(home, "task", "src", writes_disk=True)
    before = src.disk.read_bytes()
    copy = tmp_path / "copy.raw"

    def copy_disk() -> None:
        copy.write_bytes(src.disk.read_bytes())

    p.save_running_state(
        src, tmp_path / "s", shared_memory=False, keep_running=True, while_paused=copy_disk
    )
    assert copy.read_bytes() == before  # unchanged while paused
    after = src.disk.read_bytes()
    chunk = after[GUEST_WRITE_OFFSET : GUEST_WRITE_OFFSET + 65536]
    assert chunk == bytes([GUEST_WRITE_PATTERN]) * 65536
    assert vm_state(home, "task", "src")["disk_writes"] == 1  # type: ignore[index]


# ---- across processes ----
def test_fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    env = fake_env(tmp_path / "h", caps="disk_format=raw")
    assert env["AGENT_SWARM_HOME"] == str(tmp_path / "h")
    assert env["AGENT_SWARM_PROVIDER"] == "fake"
    assert env["AGENT_SWARM_TEST_PROVIDERS"] == "fake=fakes.provider:FakeProvider"
    assert env["PYTHONPATH"] == f"{TESTS_DIR}{os.pathsep}/somewhere"
    assert (env[CAPS_ENV], env[FAIL_ENV]) == ("disk_format=raw", "")
    monkeypatch.delenv("PYTHONPATH")
    assert fake_env(tmp_path)["PYTHONPATH"] == str(TESTS_DIR)


def test_state_outlives_the_process(home: Path, specs: SpecFactory) -> None:
    spec = spec_of(specs, "t1")
    code = f"""
        from pathlib import Path
        from agent_swarm.models import VMSpec
        from agent_swarm.providers import default_provider_name, get_provider
        spec = VMSpec("task", "t1", 1, 256, Path({str(spec.disk)!r}), Path({str(spec.seed)!r}),
                      Path("serial.log"), {spec.ssh_port})
        p = get_provider()
        print(default_provider_name(), type(p).__name__, p.capabilities.disk_format)
        p.define(spec)
        p.start(spec)
        p.checkpoint(spec, "c1")
    """
    r = run_python(code, fake_env(home, caps="disk_format=raw"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["fake", "FakeProvider", "raw"]
    p = FakeProvider()  # another process's hypervisor state, seen here
    assert p.status(spec).state is InstanceState.RUNNING
    assert [c["name"] for c in p.list_checkpoints(spec)] == ["c1"]
    st = vm_state(home, "task", "t1")
    assert st is not None and st["spec"]["ssh_port"] == spec.ssh_port


def test_concurrent_processes_lose_no_update(home: Path, specs: SpecFactory) -> None:
    p = FakeProvider()
    spec = spec_of(specs, "t1")
    p.define(spec)
    p.start(spec)
    code = f"""
        import sys
        from pathlib import Path
        from agent_swarm.models import VMSpec
        from fakes.provider import FakeProvider
        spec = VMSpec("task", "t1", 1, 256, Path({str(spec.disk)!r}), Path({str(spec.seed)!r}),
                      Path("serial.log"), {spec.ssh_port})
        p = FakeProvider()
        g = p.guest_session(spec)
        for i in range(25):
            g.run(f"echo {{sys.argv[1]}}-{{i}}", 5)
            p.define(spec)
    """
    env = {**os.environ, **fake_env(home)}
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(n)], env=env)
        for n in range(4)
    ]
    assert [proc.wait(timeout=120) for proc in procs] == [0] * 4
    st = vm_state(home, "task", "t1")
    assert st is not None
    assert len(st["commands"]) == 100 and len(set(st["commands"])) == 100
    assert st["defines"] == 101
    leftovers = [f.name for f in (home / "fake-hypervisor").iterdir()]
    assert sorted(leftovers) == [".lock", "task-t1.json"]  # no temp files left behind
    json.loads((home / "fake-hypervisor" / "task-t1.json").read_text())
