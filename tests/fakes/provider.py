"""A fake VM provider for workflow tests: the real CLI, no root, no libvirtd, nothing boots.

Register it in a CLI subprocess with :func:`fake_env` (``AGENT_SWARM_TEST_PROVIDERS``, see
``agent_swarm.providers``). Like a hypervisor daemon, its state outlives each command: one
JSON file per VM in ``$AGENT_SWARM_HOME/fake-hypervisor/<kind>-<name>.json``, replaced
atomically (temp file + ``os.replace``) under an flock, so tests can read it
(:func:`vm_state`) and change it (:func:`set_vm_state`) between commands.

Knobs (environment of the process that constructs the provider):

``AGENT_SWARM_FAKE_CAPS``
    Capability overrides, ``field=value`` separated by commas, e.g.
    ``disk_format=raw,dynamic_address=1,warm_clones=0``. Booleans are 1/0 (true/false,
    yes/no, on/off); tuples (``networks``, ``host_needs``) are joined with ``+``
    (``networks=user+nat``). An unknown field is an error.
``AGENT_SWARM_FAKE_FAIL``
    Injected failures, ``op:NAME`` separated by commas (NAME ``*`` matches every VM):
    ``define``, ``start``, ``stop``, ``delete``, ``checkpoint``, ``restore``, ``save`` (of
    a running state), ``resume`` (from a saved state) raise :class:`ProviderError`;
    ``save-stuck`` pauses the VM, then raises and leaves it paused (a hypervisor that failed
    to resume it); ``save-crash`` SIGKILLs the calling process while the VM is paused (after
    ``while_paused`` ran: a command killed mid-fork, the VM left paused);
    ``guest`` makes every guest command raise :class:`SSHError`; ``agent`` makes the
    VM's guest agent not answer (``ping`` is False); ``identity`` makes the guest not take
    the identity pushed through its agent (the push "succeeds" but reports the old one);
    ``probe:*`` makes the host probe report the provider unavailable.
``AGENT_SWARM_FAKE_NOTICE``
    What :meth:`FakeProvider.startup_notice` returns (unset: None).
``AGENT_SWARM_FAKE_EMULATOR``
    The emulator version :meth:`FakeProvider.warm_fingerprint` reports (unset: ``fake 1``):
    changing it between saving a warm template and creating a task is "the host changed".
``AGENT_SWARM_FAKE_MACHINES``
    The machine types this "host" runs, ``+``-separated, the default first (unset:
    ``fake-machine-1``); a spec naming another one fingerprints as ``unsupported:<name>``
    and cannot resume.

Per-VM state a test can set with :func:`set_vm_state`: ``network_dead`` (True: a running VM
reports a runtime problem until the next ``start``), ``state`` (``"broken"`` with
``broken_reason`` shows a BROKEN VM), ``cloud_init`` (``"error"``: readiness fails),
``identity_sticks`` (False: like the ``identity`` failure; saved with a warm template and
inherited by its clones), ``memory`` (a dict: what the guest holds in RAM; lost when it powers
off, saved with its running state and inherited by what resumes from it), ``writes_disk``
(True: the guest writes its disk as soon as it runs again after a pause: 64 KiB of
:data:`GUEST_WRITE_PATTERN` at :data:`GUEST_WRITE_OFFSET`, through ``qemu-io`` for a qcow2
disk; counted in ``disk_writes``).

Warm clones (capability ``warm_clones``, on by default): a VM defined with
``memory_shared`` and a ``memory_file`` can be saved running (:meth:`save_running_state`
writes a small JSON state file: the VM's shape, MAC, machine type and its guest's identity,
and marks the RAM file, where its ``memory`` goes); a VM defined with ``incoming`` maps the
RAM file privately and is resumed from such a state (:meth:`resume_from_state`), inheriting
the saved guest identity (recorded as ``inherited``) and memory until :class:`FakeGuestAgent`
runs the core's identity push
(recorded: ``identity_pushes``, ``clock`` and ``clock_sets``, ``rng_reseeded``,
``argv_has_secret``, ``stdin_has_private_key``). A VM defined with ``incoming`` cannot
``start``: it only waits for a state. The guest's identity is ``hostname``, ``machine_id``
and ``host_pub`` in its record (a boot with a seed of a new ``instance_id`` sets ``hostname``
and ``host_pub`` from the seed, as cloud-init does; the first boot sets ``machine_id``).

Forks (``save_running_state(shared_memory=False, keep_running=True, while_paused=...)``): any
running VM can be saved with its RAM in the state file (then ``ram_included``); it is
``paused`` (counted in ``pauses``) while ``while_paused`` runs and running again afterwards,
whatever happened (``unpauses``), unless an injected ``save-stuck`` / ``save-crash`` leaves it
paused; ``start`` resumes a paused VM (no boot). Like QEMU, the state records the RAM layout
the VM *runs* with (``live_spec``: its definition when it booted or resumed; a memory file
then is QEMU's ``memory-backend-file``, else its default RAM block): a VM resumed from it with
``shared_memory=False`` must name a memory file exactly when the saved VM did (mapped
privately; its content is not read), and ``shared_memory`` must match how the state was saved
(``x-ignore-shared``). Recorded on the resumed VM: ``resumed_shared_memory``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from agent_swarm import paths
from agent_swarm.errors import (
    InvalidState,
    ProviderError,
    SSHError,
    Timeout,
    UnsupportedByProvider,
)
from agent_swarm.fsutil import atomic_write, file_lock
from agent_swarm.models import GUEST_USER, InstanceState, SSHEndpoint, VMSpec
from agent_swarm.providers.base import (
    Capabilities,
    Check,
    ProbeResult,
    Provider,
    ProviderInfo,
    VMStatus,
)

STATE_DIR = "fake-hypervisor"
CAPS_ENV = "AGENT_SWARM_FAKE_CAPS"
FAIL_ENV = "AGENT_SWARM_FAKE_FAIL"
NOTICE_ENV = "AGENT_SWARM_FAKE_NOTICE"
EMULATOR_ENV = "AGENT_SWARM_FAKE_EMULATOR"
MACHINES_ENV = "AGENT_SWARM_FAKE_MACHINES"
DEFAULT_EMULATOR = "fake 1"
DEFAULT_MACHINE = "fake-machine-1"
STATE_MAGIC = "agent-swarm fake saved state"
RAM_MARK = b"fake guest RAM of "  # + the template's name: what save_running_state writes
GUEST_WRITE_OFFSET = 4 << 20  # where a guest with ``writes_disk`` writes when it runs again
GUEST_WRITE_PATTERN = 0x5A
TESTS_DIR = Path(__file__).resolve().parents[1]  # on PYTHONPATH: `fakes.provider` imports

DEFAULT_CAPS = Capabilities(
    disk_format="qcow2",
    snapshots=True,
    memory_snapshots=True,
    warm_clones=True,
    networks=("user", "nat"),
    host_needs=("nothing: a test double",),
)

_STATES = {
    "running": InstanceState.RUNNING,
    "stopped": InstanceState.STOPPED,
    "paused": InstanceState.PAUSED,
}


def caps_from_env(value: str | None = None) -> Capabilities:
    """:data:`DEFAULT_CAPS` with the overrides of ``AGENT_SWARM_FAKE_CAPS`` (or ``value``)."""
    value = os.environ.get(CAPS_ENV, "") if value is None else value
    fields = {f.name: f for f in dataclasses.fields(Capabilities)}
    changes: dict[str, Any] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, raw = item.strip().partition("=")
        if not sep or key not in fields:
            raise ValueError(f"{CAPS_ENV}: bad item {item!r} (fields: {', '.join(fields)})")
        current = getattr(DEFAULT_CAPS, key)
        if isinstance(current, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(f"{CAPS_ENV}: {key} must be 1 or 0, not {raw!r}")
            changes[key] = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(current, tuple):
            changes[key] = tuple(x for x in raw.split("+") if x)
        else:
            changes[key] = raw
    return dataclasses.replace(DEFAULT_CAPS, **changes)


def _failures() -> set[tuple[str, str]]:
    out = set()
    for item in os.environ.get(FAIL_ENV, "").split(","):
        op, sep, name = item.strip().partition(":")
        if sep and op and name:
            out.add((op, name))
    return out


def _injected(op: str, name: str) -> bool:
    f = _failures()
    return (op, name) in f or (op, "*") in f


# ---- the "hypervisor's" state files ----


def _dir(home: str | os.PathLike[str]) -> Path:
    return Path(home) / STATE_DIR


def _file(home: str | os.PathLike[str], kind: str, name: str) -> Path:
    return _dir(home) / f"{kind}-{name}.json"


@contextlib.contextmanager
def _locked(home: str | os.PathLike[str]) -> Iterator[None]:
    d = _dir(home)
    d.mkdir(parents=True, exist_ok=True)
    with file_lock(d / ".lock"):
        yield


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


def _write(home: str | os.PathLike[str], state: dict[str, Any]) -> None:
    path = _file(home, state["kind"], state["name"])
    atomic_write(path, json.dumps(state, indent=1, sort_keys=True) + "\n", durable=False)


def vm_state(home: str | os.PathLike[str], kind: str, name: str) -> dict[str, Any] | None:
    """The fake hypervisor's record of one VM (None: it has no such VM)."""
    return _read(_file(home, kind, name))


def set_vm_state(home: str | os.PathLike[str], kind: str, name: str, **changes: Any) -> None:
    """Change a VM's record, as if something happened to it outside agent-swarm."""
    with _locked(home):
        state = _read(_file(home, kind, name))
        if state is None:
            raise LookupError(f"the fake hypervisor has no {kind} {name!r}")
        state.update(changes)
        _write(home, state)


def fake_env(home: str | os.PathLike[str], caps: str = "", fail: str = "") -> dict[str, str]:
    """Environment variables for a CLI subprocess that uses the fake provider with state
    directory ``home`` (merge them over ``os.environ``)."""
    pythonpath = os.environ.get("PYTHONPATH", "")
    return {
        "AGENT_SWARM_HOME": str(home),
        "AGENT_SWARM_TEST_PROVIDERS": "fake=fakes.provider:FakeProvider",
        "AGENT_SWARM_PROVIDER": "fake",
        "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS_DIR), pythonpath) if p),
        CAPS_ENV: caps,
        FAIL_ENV: fail,
    }


def _spec_json(spec: VMSpec) -> dict[str, Any]:
    return {
        f.name: str(v) if isinstance(v := getattr(spec, f.name), Path) else v
        for f in dataclasses.fields(spec)
    }


def machines() -> list[str]:
    """The machine types this fake host runs (``AGENT_SWARM_FAKE_MACHINES``), default first."""
    out = [m for m in os.environ.get(MACHINES_ENV, "").split("+") if m]
    return out or [DEFAULT_MACHINE]


def machine_id_of(kind: str, name: str) -> str:
    """The machine-id a VM's first boot gives it (stable per VM, 32 hex digits)."""
    return hashlib.md5(f"{kind}/{name}".encode()).hexdigest()  # an id, not a secret


def _seed_identity(seed: Path) -> dict[str, Any] | None:
    """What cloud-init takes from a NoCloud seed ISO on a new instance: instance-id, hostname
    and the SSH host key (None: no readable seed)."""
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(seed))
        try:
            out: dict[str, bytes] = {}
            for name in ("meta-data", "user-data"):
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
                out[name] = buf.getvalue()
        finally:
            iso.close()
        meta = json.loads(out["meta-data"])
        text = out["user-data"].decode()
        user = json.loads(text.split("\n", 1)[1]) if text.startswith("#cloud-config") else {}
    except Exception:  # a test double: no readable seed, no identity from it
        return None
    return {
        "instance_id": meta.get("instance-id"),
        "hostname": meta.get("local-hostname"),
        "host_pub": (user.get("ssh_keys") or {}).get("ed25519_public"),
    }


def dynamic_port(kind: str, name: str) -> int:
    """The port a dynamic-address VM "gets" (stable per VM)."""
    return 20000 + zlib.crc32(f"{kind}/{name}".encode()) % 20000


class FakeProvider(Provider):
    name: ClassVar[str] = "fake"
    capabilities: ClassVar[Capabilities] = DEFAULT_CAPS

    def __init__(self) -> None:
        # Per instance: a test may change AGENT_SWARM_FAKE_CAPS between providers.
        self.capabilities = caps_from_env()  # type: ignore[misc]
        self.home = paths.home()

    @classmethod
    def probe(cls) -> ProbeResult:
        if _injected("probe", "*"):
            check = Check("fake", False, f"made unavailable by {FAIL_ENV}", hint="unset it")
            return ProbeResult("fake", "test double", False, (check,))
        check = Check("fake", True, "always available (nothing boots)")
        return ProbeResult("fake", "test double: VMs are JSON files", True, (check,))

    # ---- host ----
    def info(self) -> ProviderInfo:
        return ProviderInfo(self.name, "fake 1", self.capabilities)

    def check_host(self) -> None:
        return None

    def startup_notice(self) -> str | None:
        return os.environ.get(NOTICE_ENV) or None

    # ---- helpers ----
    def _label(self, kind: str, name: str) -> str:
        return f"fake-{kind}-{name}"

    def _fail(self, op: str, spec: VMSpec) -> None:
        if _injected(op, spec.name):
            raise ProviderError(f"injected failure: {op} of {spec.kind} {spec.name!r} ({FAIL_ENV})")

    @contextlib.contextmanager
    def _edit(self, spec: VMSpec) -> Iterator[dict[str, Any]]:
        """The VM's record, written back when the block ends without an exception."""
        with _locked(self.home):
            state = _read(_file(self.home, spec.kind, spec.name))
            if state is None:
                raise InvalidState(f"{spec.kind} {spec.name!r} has no fake VM")
            yield state
            _write(self.home, state)

    # ---- lifecycle ----
    def define(self, spec: VMSpec) -> None:
        self._fail("define", spec)
        for what, p in (("disk", spec.disk), ("seed", spec.seed)):
            if not Path(p).is_file():
                raise ProviderError(f"cannot define {spec.kind} {spec.name!r}: no {what} {p}")
        if spec.network not in self.capabilities.networks:
            raise ProviderError(f"network {spec.network!r} is not one of this provider's")
        if spec.memory_file is not None and not Path(spec.memory_file).is_file():
            raise ProviderError(
                f"cannot define {spec.kind} {spec.name!r}: no memory file {spec.memory_file}"
            )
        if spec.memory_shared and spec.memory_file is None:
            raise ProviderError(
                f"cannot define {spec.kind} {spec.name!r}: shared memory needs a memory file"
            )
        if spec.machine is not None and spec.machine not in machines():
            raise ProviderError(f"machine type {spec.machine!r} is not one of this host's")
        with _locked(self.home):
            state = _read(_file(self.home, spec.kind, spec.name)) or {
                "kind": spec.kind,
                "name": spec.name,
                "home": str(self.home),
                "state": "stopped",
                "boots": 0,
                "stops": 0,
                "defines": 0,
                "address_polls": 0,
                "polls_since_start": 0,
                "identity_reset": False,
                "identity_resets": 0,
                "commands": [],
                "checkpoints": [],
                "network_dead": False,
                "network_repairs": 0,
            }
            state["spec"] = _spec_json(spec)
            state["defines"] += 1
            _write(self.home, state)

    def start(self, spec: VMSpec) -> None:
        self._fail("start", spec)
        unpaused = False
        with self._edit(spec) as st:
            if st["state"] in ("running", "paused"):
                if st["network_dead"]:
                    st["network_dead"] = False
                    st["network_repairs"] += 1
                if st["state"] == "paused":  # left paused (an interrupted save for a fork)
                    st["state"] = "running"
                    st["unpauses"] = st.get("unpauses", 0) + 1
                    unpaused = True
            elif st["spec"].get("incoming"):
                raise ProviderError(
                    f"{spec.kind} {spec.name!r} is defined to wait for a saved state "
                    "(incoming): it cannot boot"
                )
            else:
                st.update(state="running", network_dead=False, polls_since_start=0, memory={})
                st["live_spec"] = dict(st["spec"])  # what it runs with until it powers off
                st["boots"] += 1
                seed = _seed_identity(spec.seed)
                if seed is not None and seed["instance_id"] != st.get("instance_id"):
                    # a new instance: cloud-init names it and installs the pinned host key
                    st.update(seed)
                st.setdefault("hostname", spec.name)  # a first boot: cloud-init names it
                st.setdefault("machine_id", machine_id_of(spec.kind, spec.name))
        if unpaused:
            self._guest_writes(spec)

    def stop(self, spec: VMSpec, *, force: bool = False, timeout: float = 90) -> None:
        self._fail("stop", spec)
        with self._edit(spec) as st:
            if st["state"] != "stopped":
                st.update(state="stopped", network_dead=False, last_stop_forced=force, memory={})
                st["stops"] += 1

    def delete(self, spec: VMSpec) -> None:
        self._fail("delete", spec)
        with _locked(self.home):
            _file(self.home, spec.kind, spec.name).unlink(missing_ok=True)

    def _status(self, st: dict[str, Any]) -> VMStatus:
        label = self._label(st["kind"], st["name"])
        state = _STATES.get(st.get("state", ""))
        if state is None:
            reason = st.get("broken_reason") or f"fake state {st.get('state')!r}"
            return VMStatus(InstanceState.BROKEN, reason, label)
        return VMStatus(state, None, label)

    def status(self, spec: VMSpec) -> VMStatus:
        label = self._label(spec.kind, spec.name)
        try:
            st = _read(_file(self.home, spec.kind, spec.name))
        except (OSError, ValueError) as exc:
            return VMStatus(InstanceState.BROKEN, f"unreadable fake VM: {exc}", label)
        if st is None:
            return VMStatus(InstanceState.MISSING, "no fake VM", label)
        return self._status(st)

    def list_ours(self) -> dict[tuple[str, str], VMStatus]:
        out = {}
        d = _dir(self.home)
        if not d.is_dir():
            return {}
        for f in sorted(d.glob("*.json")):
            st = _read(f)
            if st is not None:
                out[(st["kind"], st["name"])] = self._status(st)
        return out

    def owner_of(self, kind: str, name: str) -> str | None:
        st = vm_state(self.home, kind, name)
        return None if st is None else str(st["home"])

    def runtime_problem(self, spec: VMSpec) -> str | None:
        st = vm_state(self.home, spec.kind, spec.name)
        if st is None or st["state"] != "running" or not st["network_dead"]:
            return None
        return "running, but its (fake) network is dead: `start` repairs it"

    # ---- access ----
    def ssh_endpoint(self, spec: VMSpec) -> SSHEndpoint:
        if not self.capabilities.dynamic_address:
            return SSHEndpoint("127.0.0.1", spec.ssh_port, GUEST_USER)
        with self._edit(spec) as st:
            st["address_polls"] += 1
            st["polls_since_start"] += 1
            ready = st["state"] == "running" and st["polls_since_start"] > 1
        if not ready:
            raise Timeout(f"{spec.name} has no address yet")
        return SSHEndpoint("127.0.0.1", dynamic_port(spec.kind, spec.name), GUEST_USER)

    def guest_session(self, spec: VMSpec) -> FakeGuest:
        return FakeGuest(self, spec)

    def guest_agent(self, spec: VMSpec) -> FakeGuestAgent:
        return FakeGuestAgent(self, spec)

    # ---- warm templates and clones ----
    def _require_warm(self) -> None:
        if not self.capabilities.warm_clones:
            raise UnsupportedByProvider("warm clones", provider=self.name)

    def warm_fingerprint(self, spec: VMSpec) -> dict[str, str]:
        self._require_warm()
        known = machines()
        machine = spec.machine or known[0]
        if machine not in known:
            machine = f"unsupported:{machine}"
        shape = f"cpus={spec.cpus} memory={spec.memory_mib} network={spec.network}"
        return {
            "emulator": os.environ.get(EMULATOR_ENV) or DEFAULT_EMULATOR,
            "machine": machine,
            "devices": hashlib.sha256(shape.encode()).hexdigest()[:16],
        }

    def save_running_state(
        self,
        spec: VMSpec,
        state: Path,
        *,
        shared_memory: bool = True,
        keep_running: bool = False,
        while_paused: Callable[[], None] | None = None,
    ) -> float:
        self._require_warm()
        self._fail("save", spec)
        what = f"{spec.kind} {spec.name!r}"
        with self._edit(spec) as st:
            if st["state"] != "running":
                raise ProviderError(f"{what} is not running: nothing to save")
            live = st.get("live_spec") or st["spec"]
            if shared_memory and (not live.get("memory_shared") or not live.get("memory_file")):
                raise ProviderError(
                    f"{what} does not map its RAM from a shared file: its running state "
                    "cannot be saved without the RAM"
                )
            st["state"] = "paused"
            st["pauses"] = st.get("pauses", 0) + 1
            snapshot = dict(st)
        t0 = time.monotonic()
        ok = False
        try:
            memory = dict(snapshot.get("memory") or {})
            if shared_memory:  # the guest's memory, as the shared mapping left it
                with open(live["memory_file"], "r+b") as f:
                    f.write(RAM_MARK + spec.name.encode() + b"\n")
                    f.write(json.dumps(memory, sort_keys=True).encode() + b"\n")
            saved = {
                "magic": STATE_MAGIC,
                "kind": spec.kind,
                "name": spec.name,
                "cpus": live["cpus"],
                "memory_mib": live["memory_mib"],
                "network": live["network"],
                "machine": live.get("machine") or machines()[0],
                "mac": live.get("mac"),
                # QEMU's RAM block: a memory-backend-file, or its default one
                "memory_backend": "file" if live.get("memory_file") else "ram",
                "ram_included": not shared_memory,
                "guest": {
                    "hostname": snapshot.get("hostname"),
                    "machine_id": snapshot.get("machine_id"),
                    "host_pub": snapshot.get("host_pub"),
                },
                "identity_sticks": snapshot.get("identity_sticks", True),
            }
            if not shared_memory:
                saved["memory"] = memory
            fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(saved, sort_keys=True) + "\n")
            if _injected("save-stuck", spec.name):
                raise ProviderError(
                    f"injected failure: save-stuck of {what} ({FAIL_ENV}): left paused"
                )
            if while_paused is not None:
                with self._edit(spec) as st:  # counted only if it really is paused now
                    if st["state"] == "paused":
                        st["while_paused_ran"] = st.get("while_paused_ran", 0) + 1
                while_paused()
            if _injected("save-crash", spec.name):
                os.kill(os.getpid(), signal.SIGKILL)  # a command killed mid-fork
            ok = True
        finally:
            if not _injected("save-stuck", spec.name):
                with self._edit(spec) as st:
                    if keep_running:  # running again whatever happened
                        st["state"] = "running"
                        st["unpauses"] = st.get("unpauses", 0) + 1
                    else:  # powered off after the save (or the failure)
                        st.update(state="stopped", network_dead=False, memory={})
                        st["stops"] += 1
                    if ok:
                        st["saved_to"] = str(state)
                        st["saves"] = st.get("saves", 0) + 1
                        st.setdefault("saved_shared_memory", []).append(shared_memory)
        if keep_running and not _injected("save-stuck", spec.name):
            self._guest_writes(spec)
        return time.monotonic() - t0

    def _guest_writes(self, spec: VMSpec) -> None:
        """A guest with ``writes_disk`` writes its disk as soon as it runs again."""
        st = vm_state(self.home, spec.kind, spec.name)
        if st is None or not st.get("writes_disk"):
            return
        disk = Path(st["spec"]["disk"])
        if disk.suffix == ".qcow2":
            cmd = f"write -P {GUEST_WRITE_PATTERN:#x} {GUEST_WRITE_OFFSET} 64k"
            r = subprocess.run(
                ["qemu-io", "-f", "qcow2", "-c", cmd, str(disk)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if r.returncode != 0:
                raise ProviderError(f"the fake guest could not write {disk}: {r.stderr}")
        else:
            fd = os.open(disk, os.O_WRONLY)
            try:
                os.pwrite(fd, bytes([GUEST_WRITE_PATTERN]) * 65536, GUEST_WRITE_OFFSET)
            finally:
                os.close(fd)
        with self._edit(spec) as st:
            st["disk_writes"] = st.get("disk_writes", 0) + 1

    def resume_from_state(self, spec: VMSpec, state: Path, *, shared_memory: bool = True) -> None:
        self._require_warm()
        self._fail("resume", spec)
        with self._edit(spec) as st:
            defined = st["spec"]
            what = f"{spec.kind} {spec.name!r}"
            if st["state"] != "stopped":
                raise ProviderError(f"{what} is {st['state']}: only a defined, off VM resumes")
            if not defined.get("incoming"):
                raise ProviderError(f"{what} is not defined to wait for a saved state")
            if defined.get("memory_shared"):
                # Its writes would land in the template's RAM, under every other clone.
                raise ProviderError(f"{what} maps its RAM file shared: refusing to resume it")
            try:
                saved = json.loads(Path(state).read_text())
            except (OSError, ValueError) as exc:
                raise ProviderError(f"{what}: cannot read the saved state {state}: {exc}") from exc
            if not isinstance(saved, dict) or saved.get("magic") != STATE_MAGIC:
                raise ProviderError(f"{what}: {state} is not a saved state")
            if bool(saved.get("ram_included")) == shared_memory:
                how = "with" if saved.get("ram_included") else "without"
                raise ProviderError(
                    f"{what}: the state was saved {how} its RAM, and shared_memory="
                    f"{shared_memory} disagrees (x-ignore-shared)"
                )
            if shared_memory and not defined.get("memory_file"):
                raise ProviderError(f"{what} has no RAM file to resume from")
            memory: dict[str, Any] = {}
            if defined.get("memory_file"):
                ram = Path(defined["memory_file"])
                try:
                    with open(ram, "rb") as f:
                        head = f.read(1 << 16)
                    size = ram.stat().st_size
                except OSError as exc:
                    raise ProviderError(f"{what}: cannot map its RAM file {ram}: {exc}") from exc
                if size != defined["memory_mib"] << 20:
                    raise ProviderError(
                        f"{what}: its RAM file {ram} is not {defined['memory_mib']} MiB"
                    )
                if shared_memory:
                    mark = RAM_MARK + saved["name"].encode()
                    if not head.startswith(mark):
                        raise ProviderError(
                            f"{what}: {ram} is not the RAM the state was saved with"
                        )
                    with contextlib.suppress(ValueError, IndexError):
                        memory = json.loads(head[len(mark) :].split(b"\n")[1])
            if not shared_memory:
                backend = "file" if defined.get("memory_file") else "ram"
                if backend != saved.get("memory_backend", "ram"):
                    raise ProviderError(
                        f"{what}: its RAM block ({backend}) is not the saved VM's "
                        f"({saved.get('memory_backend')}): Unknown ramblock"
                    )
                memory = dict(saved.get("memory") or {})
            for key in ("cpus", "memory_mib", "network", "mac"):
                if defined.get(key) != saved.get(key):
                    raise ProviderError(
                        f"{what}: its {key} ({defined.get(key)}) is not the saved state's "
                        f"({saved.get(key)})"
                    )
            machine = defined.get("machine") or machines()[0]
            if machine != saved["machine"] or machine not in machines():
                raise ProviderError(
                    f"{what}: machine type {machine!r} cannot load a state saved on "
                    f"{saved['machine']!r}"
                )
            guest = saved.get("guest") or {}
            st.update(
                state="running",
                network_dead=False,
                polls_since_start=0,
                resumed_from=str(state),
                resumed_spec=dict(defined),  # the definition it resumed with
                resumed_shared_memory=shared_memory,
                live_spec=dict(defined),
                inherited=dict(guest),
                hostname=guest.get("hostname"),
                machine_id=guest.get("machine_id"),
                host_pub=guest.get("host_pub"),
                identity_sticks=bool(saved.get("identity_sticks", True)),
                memory=memory,
            )
            st["resumes"] = st.get("resumes", 0) + 1

    # ---- checkpoints ----
    def _require_snapshots(self) -> None:
        if not self.capabilities.snapshots:
            raise UnsupportedByProvider("checkpoints", provider=self.name)

    def checkpoint(self, spec: VMSpec, tag: str) -> None:
        self._require_snapshots()
        self._fail("checkpoint", spec)
        with self._edit(spec) as st:
            running = st["state"] == "running"
            if running and not self.capabilities.memory_snapshots:
                raise UnsupportedByProvider("checkpoints of a running VM", provider=self.name)
            if any(c["name"] == tag for c in st["checkpoints"]):
                raise ProviderError(f"{spec.name!r} already has a checkpoint {tag!r}")
            st["checkpoints"].append(
                {
                    "name": tag,
                    "created": int(time.time()),
                    "state": "running" if running else "shutoff",
                }
            )

    def restore(self, spec: VMSpec, tag: str) -> None:
        self._require_snapshots()
        self._fail("restore", spec)
        with self._edit(spec) as st:
            cp = next((c for c in st["checkpoints"] if c["name"] == tag), None)
            if cp is None:
                raise ProviderError(f"{spec.name!r} has no checkpoint {tag!r}")
            st.update(
                state="running" if cp["state"] == "running" else "stopped",
                network_dead=False,
                restored=tag,
            )

    def list_checkpoints(self, spec: VMSpec) -> list[dict[str, Any]]:
        self._require_snapshots()
        st = vm_state(self.home, spec.kind, spec.name)
        if st is None:
            raise InvalidState(f"{spec.kind} {spec.name!r} has no fake VM")
        return [dict(c) for c in st["checkpoints"]]


class FakeGuest:
    """The fake's own command channel into a "running" guest (no SSH)."""

    def __init__(self, provider: FakeProvider, spec: VMSpec) -> None:
        self.provider = provider
        self.spec = spec
        self.closed = False

    def run(self, command: str, timeout: float) -> tuple[int, str, str]:
        spec = self.spec
        if _injected("guest", spec.name):
            raise SSHError(f"injected failure: guest command on {spec.name!r} ({FAIL_ENV})")
        with _locked(self.provider.home):
            st = _read(_file(self.provider.home, spec.kind, spec.name))
            if st is None or st["state"] != "running":
                raise SSHError(f"{spec.kind} {spec.name!r} is not running")
            if command.lstrip().startswith("cloud-init status"):
                status = st.get("cloud_init", "done")
                return (0 if status == "done" else 1), f"status: {status}\n", ""
            if "machine-id" in command:
                st["identity_reset"] = True
                st["identity_resets"] += 1
            else:
                st["commands"].append(command)
            _write(self.provider.home, st)
        return 0, "", ""

    def close(self) -> None:
        self.closed = True


class FakeGuestAgent:
    """The fake's guest agent (:class:`~agent_swarm.providers.base.GuestAgent`): answers while
    the VM runs; runs the core's identity push (``IDENTITY_PUSH`` of
    :mod:`agent_swarm.ops.warm`, its data on stdin) on the VM's record, and records any other
    command in ``agent_commands``."""

    def __init__(self, provider: FakeProvider, spec: VMSpec) -> None:
        self.provider = provider
        self.spec = spec

    def _record(self) -> dict[str, Any] | None:
        return vm_state(self.provider.home, self.spec.kind, self.spec.name)

    def ping(self, timeout: float) -> bool:
        st = self._record()
        running = st is not None and st["state"] == "running"
        return running and not _injected("agent", self.spec.name)

    def set_time(self) -> None:
        if not self.ping(5):
            raise ProviderError(f"{self.spec.name!r}: the guest agent does not answer")
        with self.provider._edit(self.spec) as st:
            st["clock"] = time.time()
            st["clock_sets"] = st.get("clock_sets", 0) + 1

    def exec(
        self,
        argv: list[str],
        stdin: bytes,
        timeout: float,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[int, bytes, bytes]:
        from agent_swarm.ops.warm import IDENTITY_PUSH

        if not self.ping(5):
            raise ProviderError(f"{self.spec.name!r}: the guest agent does not answer")
        if meanwhile is not None:
            meanwhile()  # the command has "started"
        with self.provider._edit(self.spec) as st:
            # The push is recognised by its script, whatever else argv holds (so that a
            # secret passed there is seen and recorded as ``argv_has_secret``).
            if IDENTITY_PUSH not in argv[1:]:
                st.setdefault("agent_commands", []).append(list(argv))
                return 0, b"", b""
            return self._push(st, argv, stdin)

    def _push(self, st: dict[str, Any], argv: list[str], stdin: bytes) -> tuple[int, bytes, bytes]:
        """What IDENTITY_PUSH does to a guest (its clock, RNG, SSH host key, machine-id and
        hostname), on its record; it prints what the guest has then, as the script does."""
        from agent_swarm.ops.warm import decode_payload

        try:
            d = decode_payload(stdin)
            now, seed = float(d["now"]), bytes.fromhex(d["seed"])
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            return 255, b"", f"bad input: {exc!r}\n".encode()
        key, pub, machine_id, hostname = d["key"], d["pub"], d["machine_id"], d["hostname"]
        secrets_ = [key, d["seed"]] + [ln for ln in key.splitlines() if len(ln) > 20]
        st["identity_pushes"] = st.get("identity_pushes", 0) + 1
        st["argv_has_secret"] = any(x in a for a in argv for x in secrets_ if x)
        st["stdin_has_private_key"] = "PRIVATE KEY" in key and b"PRIVATE KEY" in stdin
        st["clock"] = now
        st["clock_sets"] = st.get("clock_sets", 0) + 1
        if len(seed) < 32:
            return 255, b"", b"RNDADDENTROPY: seed too short\n"
        st["rng_reseeded"] = st.get("rng_reseeded", 0) + 1
        if not ("PRIVATE KEY" in key and pub.startswith("ssh-ed25519 ") and len(machine_id) == 32):
            return 255, b"", b"bad identity data\n"
        if st.get("identity_sticks", True) and not _injected("identity", self.spec.name):
            st.update(hostname=hostname, machine_id=machine_id, host_pub=pub)
            st["host_key_private_sha256"] = hashlib.sha256(key.encode()).hexdigest()
        pub_now = str(st.get("host_pub") or "").split()
        keys = ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
        report = [
            f"hostname={st.get('hostname') or ''}",
            f"pub={pub_now[1] if len(pub_now) > 1 else ''}",
            f"keys={','.join(keys)}",
            f"machine_id={st.get('machine_id') or ''}",
        ]
        return 0, ("\n".join(report) + "\n").encode(), b""
