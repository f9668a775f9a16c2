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
    ``define``, ``start``, ``stop``, ``delete``, ``checkpoint``, ``restore`` raise
    :class:`ProviderError`; ``guest`` makes every guest command raise :class:`SSHError`;
    ``probe:*`` makes the host probe report the provider unavailable.
``AGENT_SWARM_FAKE_NOTICE``
    What :meth:`FakeProvider.startup_notice` returns (unset: None).

Per-VM state a test can set with :func:`set_vm_state`: ``network_dead`` (True: a running VM
reports a runtime problem until the next ``start``), ``state`` (``"broken"`` with
``broken_reason`` shows a BROKEN VM), ``cloud_init`` (``"error"``: readiness fails).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import zlib
from collections.abc import Iterator
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
TESTS_DIR = Path(__file__).resolve().parents[1]  # on PYTHONPATH: `fakes.provider` imports

DEFAULT_CAPS = Capabilities(
    disk_format="qcow2",
    snapshots=True,
    memory_snapshots=True,
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
        with self._edit(spec) as st:
            if st["state"] == "running":
                if st["network_dead"]:
                    st["network_dead"] = False
                    st["network_repairs"] += 1
                return
            st.update(state="running", network_dead=False, polls_since_start=0)
            st["boots"] += 1

    def stop(self, spec: VMSpec, *, force: bool = False, timeout: float = 90) -> None:
        self._fail("stop", spec)
        with self._edit(spec) as st:
            if st["state"] != "stopped":
                st.update(state="stopped", network_dead=False, last_stop_forced=force)
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
