"""The Windows provider: Hyper-V, driven by static PowerShell scripts (see :mod:`.runner`).

Disks: the core builds every VM disk as a differencing VHDX on its generation or base image
with :func:`agent_swarm.native.create_vhdx_differencing` (``Capabilities.disk_format =
"vhdx"``): no PowerShell and no copy per clone. This provider only attaches them.

VMs: generation 2, Secure Boot with the "Microsoft UEFI Certificate Authority" template
(Linux shims are signed by it), the disk on SCSI, the cloud-init seed ISO on a SCSI DVD drive,
static memory, one network adapter on the "Default Switch" (``$AGENT_SWARM_HYPERV_SWITCH``
names another), configuration under ``<home>/hyperv/<vm>/``. A VM is named
``agent-swarm-<tag>-<kind>-<name>`` (``tag``: a hash of the state directory, as the libvirt
provider names domains), and its Notes record the state directory it belongs to
(:meth:`owner_of`): "Managed by agent-swarm; do not edit. kind=task; name=t1; home=C:\\…".

Addresses: the Default Switch is a NAT with DHCP, so the guest's address is known only at run
time (``dynamic_address``). It is read on every connection attempt: the address the guest
reports through the KVP integration service (``Get-VMNetworkAdapter`` ``IPAddresses``; needs
hv_kvp_daemon in the guest), else the host's neighbour cache on the switch's interface for the
adapter's MAC (no guest daemon needed). Hyper-V sockets (hv_sock) would need an agent in the
guest listening on them and SSH carried over them: nothing in a stock cloud image does that.

Checkpoints are Hyper-V standard checkpoints (``Checkpoint-VM``/``Restore-VMSnapshot``): of a
running VM they keep its memory (``memory_snapshots``), restored it runs on; they need nothing
in the guest. (Production checkpoints need the guest's VSS/fsfreeze daemon, keep no memory and
restore to a VM that is off.) The power state a checkpoint was taken in is kept next to the
VM's configuration (``checkpoints.json``) for :meth:`list_checkpoints` and :meth:`restore`.
A project cannot have checkpoints here: Hyper-V writes a checkpointed VM's changes into a new
``.avhdx`` beside its disk, and sealing a project seals its disk file, which would then miss
them.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from agent_swarm import paths
from agent_swarm.errors import (
    AgentSwarmError,
    InvalidState,
    NotFound,
    ProviderError,
    ProviderUnavailable,
    Timeout,
    UnsupportedByProvider,
)
from agent_swarm.models import GUEST_USER, InstanceState, SSHEndpoint, VMSpec
from agent_swarm.names import validate_existing_name, validate_name
from agent_swarm.providers.base import Capabilities, Provider, ProviderInfo, VMStatus
from agent_swarm.providers.hyperv import probe as hprobe
from agent_swarm.providers.hyperv.runner import ParamValue, PowerShell, one_line

HYPERV_DIR = "hyperv"
CHECKPOINTS_FILE = "checkpoints.json"
KINDS = ("project", "task")
NOTES_HEAD = "Managed by agent-swarm; do not edit."

# Seconds each script may take (the process is killed after it).
QUICK = 60.0
DEFINE_TIMEOUT = 180.0
START_TIMEOUT = 300.0  # a saved VM resumes by reading its memory back
REMOVE_TIMEOUT = 300.0
LIST_TIMEOUT = 120.0
CHECKPOINT_TIMEOUT = 900.0  # a running VM's checkpoint writes all of its memory
STOP_MARGIN = 120.0  # beyond the shutdown timeout: the turn-off and the process itself

# Hyper-V's VM states -> ours. "*Critical" states (storage or configuration lost) are
# BROKEN, see _status.
_STATES = {
    "Running": InstanceState.RUNNING,
    "Off": InstanceState.STOPPED,
    "Saved": InstanceState.STOPPED,  # off, its memory on disk: start resumes it
    "FastSaved": InstanceState.STOPPED,
    "Paused": InstanceState.PAUSED,
    "Pausing": InstanceState.PAUSED,
    "Starting": InstanceState.STARTING,
    "Resuming": InstanceState.STARTING,
    "Reset": InstanceState.STARTING,
    "Stopping": InstanceState.STOPPING,
    "Saving": InstanceState.STOPPING,
    "FastSaving": InstanceState.STOPPING,
}
_CHECKPOINT_STATES = {
    "Running": "running",
    "Paused": "paused",
    "Off": "shutoff",
    "Saved": "shutoff",
}


def notes_for(home: Path, kind: str, name: str) -> str:
    """The VM's Notes: who it belongs to (the home last: a path may hold ';')."""
    return f"{NOTES_HEAD} kind={kind}; name={name}; home={home}"


def owner_from_notes(notes: object) -> str | None:
    """The state directory recorded by :func:`notes_for`, None when the Notes hold none."""
    if not isinstance(notes, str) or not notes.startswith(NOTES_HEAD):
        return None
    _, sep, home = notes.partition("; home=")
    return home.strip() or None if sep else None


def pick_address(kvp: object, neighbors: object) -> str | None:
    """The guest's IPv4 address: the first usable one it reports through KVP, else the first
    from the host's neighbour cache. Loopback, link-local, multicast, unspecified and
    broadcast addresses are never used."""
    for source in (kvp, neighbors):
        if not isinstance(source, list):
            continue
        for raw in source:
            if not isinstance(raw, str) or len(raw) > 15:
                continue
            try:
                ip = ipaddress.IPv4Address(raw.strip())
            except ValueError:
                continue
            if not (
                ip.is_loopback
                or ip.is_link_local
                or ip.is_multicast
                or ip.is_unspecified
                or ip == ipaddress.IPv4Address("255.255.255.255")
            ):
                return str(ip)
    return None


def _status(facts: dict[str, Any], label: str) -> VMStatus:
    state = str(facts.get("state") or "")
    if state in _STATES:
        return VMStatus(_STATES[state], None, label)
    status = one_line(facts.get("status"), 200)
    why = f"Hyper-V reports it {state or 'in no state'}"
    if state.endswith("Critical"):
        why += " (its disk or configuration cannot be reached)"
    return VMStatus(InstanceState.BROKEN, f"{why}{f': {status}' if status else ''}", label)


class HyperVProvider(Provider):
    name: ClassVar[str] = "hyperv"
    capabilities: ClassVar[Capabilities] = Capabilities(
        disk_format="vhdx",
        snapshots=True,
        memory_snapshots=True,
        suspend=True,
        dynamic_address=True,
        warm_clones=False,
        networks=("nat",),  # the Default Switch: Hyper-V's NAT with DHCP
        host_needs=(
            "Windows 10/11 Pro, Enterprise or Education (1809 or newer) or Windows Server, "
            "with Hyper-V enabled",
            "membership of Hyper-V Administrators, or an elevated prompt",
            f'the "Default Switch" (or a NAT switch with DHCP named in {hprobe.SWITCH_ENV})',
            "qemu-img, to convert each base image to VHDX once",
        ),
    )

    def __init__(self, runner: PowerShell | None = None) -> None:
        """``runner``: how scripts run (tests pass one with a fake PowerShell); by default
        the system's PowerShell, found on first use."""
        self.home = paths.home()
        self.tag = hashlib.sha256(str(self.home).encode()).hexdigest()[:6]
        self.prefix = f"agent-swarm-{self.tag}-"
        self.root = self.home / HYPERV_DIR
        self._runner = runner
        self._host: dict[str, Any] | None = None

    @property
    def runner(self) -> PowerShell:
        if self._runner is None:
            self._runner = PowerShell()
        return self._runner

    def _run(
        self, script: str, params: dict[str, ParamValue], timeout: float, what: str
    ) -> dict[str, Any]:
        result = self.runner.run(script, params, timeout=timeout, what=what)
        if not isinstance(result, dict):
            raise ProviderError(f"{script} gave no result while trying to {what}")
        return result

    # ---- host ----
    def _host_facts(self) -> dict[str, Any]:
        if self._host is None:
            if self._runner is None:  # the system's PowerShell: the probe's answer, if any
                self._host = dict(hprobe.run_host_check(self.home, self.switch))
            else:
                self._host = self._run(
                    "host-check.ps1",
                    {"StatePath": self.home, "SwitchName": self.switch},
                    QUICK,
                    "read this host's Hyper-V setup",
                )
        return self._host

    @property
    def switch(self) -> str:
        return hprobe.switch_name()

    def info(self) -> ProviderInfo:
        win = self._host_facts().get("windows")
        label = hprobe.windows_label(win if isinstance(win, dict) else None)
        return ProviderInfo(self.name, f"Hyper-V on {label}", self.capabilities)

    def check_host(self) -> None:
        for check in hprobe.host_checks(self._host_facts(), self.home, self.switch):
            if check.required and not check.ok:
                raise ProviderUnavailable(f"Hyper-V: {check.detail}", hint=check.hint)

    # ---- names ----
    def vm_name(self, kind: str, name: str) -> str:
        """``agent-swarm-<home tag>-<kind>-<name>``: unique per state directory."""
        if kind not in KINDS:
            raise ProviderError(f"the hyperv provider has no VMs of kind {kind!r}")
        return f"{self.prefix}{kind}-{validate_existing_name(name, f'{kind} name')}"

    def _name(self, spec: VMSpec) -> str:
        return self.vm_name(spec.kind, spec.name)

    @staticmethod
    def _label(vm: str) -> str:
        return f"Hyper-V VM {vm}"

    def _config_dir(self, vm: str) -> Path:
        return self.root / vm

    @staticmethod
    def _what(spec: VMSpec, verb: str) -> str:
        return f"{verb} {spec.kind} {spec.name}"

    # ---- lifecycle ----
    def define(self, spec: VMSpec) -> None:
        if spec.network not in self.capabilities.networks:
            raise ProviderError(
                f"the hyperv provider has no network {spec.network!r}",
                hint=f"choose one of: {', '.join(self.capabilities.networks)}",
            )
        if spec.memory_file is not None or spec.incoming:
            raise UnsupportedByProvider("warm clones", provider=self.name)
        vm = self._name(spec)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._run(
            "define.ps1",
            {
                "Name": vm,
                "Notes": notes_for(self.home, spec.kind, spec.name),
                "Disk": spec.disk.absolute(),
                "Seed": spec.seed.absolute(),
                "Cpus": spec.cpus,
                # Hyper-V takes memory in steps of 2 MiB.
                "MemoryMiB": spec.memory_mib + spec.memory_mib % 2,
                "SwitchName": self.switch,
                "ConfigPath": self.root,
            },
            DEFINE_TIMEOUT,
            self._what(spec, "define"),
        )

    def start(self, spec: VMSpec) -> None:
        res = self._run(
            "start.ps1",
            {
                "Name": self._name(spec),
                "Disk": spec.disk.absolute(),
                "Seed": spec.seed.absolute(),
                "SwitchName": self.switch,
            },
            START_TIMEOUT,
            self._what(spec, "start"),
        )
        if res.get("state") not in ("Running", "Starting"):
            raise ProviderError(
                f"{spec.kind} {spec.name} is {one_line(res.get('state'), 40)} after starting it"
            )

    def stop(self, spec: VMSpec, *, force: bool = False, timeout: float = 90) -> None:
        seconds = 0 if force else max(0, math.ceil(timeout))
        self._run(
            "stop.ps1",
            {"Name": self._name(spec), "TimeoutSeconds": seconds, "Force": force},
            seconds + STOP_MARGIN,
            self._what(spec, "stop"),
        )

    def delete(self, spec: VMSpec) -> None:
        vm = self._name(spec)
        self._run("remove.ps1", {"Name": vm}, REMOVE_TIMEOUT, self._what(spec, "remove"))
        # Hyper-V removed the VM's files; its (now empty) folders and our checkpoint
        # records are left: ours to remove.
        shutil.rmtree(self._config_dir(vm), ignore_errors=True)

    def _vm_facts(self, spec: VMSpec) -> dict[str, Any]:
        return self._run(
            "status.ps1", {"Name": self._name(spec)}, QUICK, self._what(spec, "look up")
        )

    def status(self, spec: VMSpec) -> VMStatus:
        label = self._label(self.prefix + f"{spec.kind}-{spec.name}")
        try:
            facts = self._vm_facts(spec)
        except AgentSwarmError as exc:
            return VMStatus(InstanceState.BROKEN, f"cannot ask Hyper-V: {exc.message}", label)
        if not facts.get("found"):
            return VMStatus(InstanceState.MISSING, "Hyper-V has no such VM", label)
        return _status(facts, label)

    def list_ours(self) -> dict[tuple[str, str], VMStatus]:
        """Every VM of this state directory, from one script run."""
        res = self._run("list.ps1", {"Prefix": self.prefix}, LIST_TIMEOUT, "list the VMs")
        out: dict[tuple[str, str], VMStatus] = {}
        dupes: set[tuple[str, str]] = set()
        vms = res.get("vms")
        for facts in vms if isinstance(vms, list) else []:
            if not isinstance(facts, dict):
                continue
            vm = str(facts.get("name") or "")
            if not vm.lower().startswith(self.prefix):
                continue
            kind, _, name = vm[len(self.prefix) :].partition("-")
            if not kind or not name:
                continue
            key = (kind, name)
            if key in out:
                dupes.add(key)
            out[key] = _status(facts, self._label(vm))
        for key in dupes:
            vm = self.prefix + "-".join(key)
            out[key] = VMStatus(
                InstanceState.BROKEN,
                "Hyper-V has several VMs of this name: rename or remove the copies",
                self._label(vm),
            )
        return out

    def owner_of(self, kind: str, name: str) -> str | None:
        try:
            vm = self.vm_name(kind, name)
        except AgentSwarmError:
            return None
        facts = self._run("status.ps1", {"Name": vm}, QUICK, f"look up {kind} {name}")
        return owner_from_notes(facts.get("notes")) if facts.get("found") else None

    def runtime_problem(self, spec: VMSpec) -> str | None:
        """A running VM whose network adapter is not on the switch (disconnected by hand,
        or the switch was made anew): no address, no SSH. :meth:`start` connects it."""
        try:
            facts = self._vm_facts(spec)
        except AgentSwarmError:
            return None  # status() says what is wrong
        if not facts.get("found") or facts.get("state") != "Running":
            return None
        if not facts.get("adapters"):
            return "it has no network adapter"
        on = str(facts.get("switch") or "")
        if on != self.switch:
            where = f"on the switch '{one_line(on, 100)}'" if on else "connected to no switch"
            return f"its network adapter is {where}, not '{self.switch}'"
        return None

    # ---- access ----
    def ssh_endpoint(self, spec: VMSpec) -> SSHEndpoint:
        res = self._run(
            "address.ps1",
            {"Name": self._name(spec), "SwitchName": self.switch},
            QUICK,
            self._what(spec, "find the address of"),
        )
        if res.get("state") != "Running":
            raise InvalidState(
                f"{spec.kind} {spec.name} is not running ({one_line(res.get('state'), 40)})"
            )
        address = pick_address(res.get("kvp"), res.get("neighbors"))
        if address is None:
            raise Timeout(
                f"{spec.name} has no address yet (no DHCP lease seen on '{self.switch}')",
                hint="the guest may still be booting; installing hyperv-daemons in it makes "
                "Hyper-V report its address directly",
            )
        return SSHEndpoint(address, 22, GUEST_USER)

    # ---- checkpoints ----
    def _checkpoint_spec(self, spec: VMSpec, tag: str) -> str:
        if spec.kind == "project":
            raise UnsupportedByProvider(
                "checkpoints of a project",
                provider=self.name,
                hint="Hyper-V keeps a checkpointed VM's new writes in a separate .avhdx file, "
                "which sealing the project would leave out: checkpoint its tasks instead",
            )
        return validate_name(tag, "checkpoint name")

    def _meta_path(self, spec: VMSpec) -> Path:
        return self._config_dir(self._name(spec)) / CHECKPOINTS_FILE

    def _read_meta(self, spec: VMSpec) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self._meta_path(spec).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            str(k): {"name": str(v.get("name")), "state": str(v.get("state"))}
            for k, v in data.items()
            if isinstance(v, dict)
        }

    def _write_meta(self, spec: VMSpec, meta: dict[str, dict[str, str]]) -> None:
        path = self._meta_path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def checkpoint(self, spec: VMSpec, tag: str) -> None:
        self._checkpoint_spec(spec, tag)
        res = self._run(
            "checkpoint.ps1",
            {"Name": self._name(spec), "Checkpoint": tag},
            CHECKPOINT_TIMEOUT,
            self._what(spec, f"make checkpoint {tag} of"),
        )
        meta = self._read_meta(spec)
        meta[str(res.get("id"))] = {
            "name": tag,
            "state": _CHECKPOINT_STATES.get(str(res.get("vm_state")), "shutoff"),
        }
        self._write_meta(spec, meta)

    def restore(self, spec: VMSpec, tag: str) -> None:
        self._checkpoint_spec(spec, tag)
        cps = [c for c in self.list_checkpoints(spec) if c["name"] == tag]
        if not cps:
            raise NotFound(f"{spec.kind} {spec.name} has no checkpoint {tag!r}")
        state = cps[0]["state"]
        self._run(
            "restore.ps1",
            {
                "Name": self._name(spec),
                "Checkpoint": tag,
                "Start": state in ("running", "paused"),
                "Pause": state == "paused",
            },
            CHECKPOINT_TIMEOUT,
            self._what(spec, f"restore checkpoint {tag} of"),
        )

    def _list(self, spec: VMSpec) -> list[dict[str, Any]]:
        res = self._run(
            "checkpoints.ps1",
            {"Name": self._name(spec)},
            QUICK,
            self._what(spec, "list the checkpoints of"),
        )
        cps = res.get("checkpoints")
        return [c for c in cps if isinstance(c, dict)] if isinstance(cps, list) else []

    def list_checkpoints(self, spec: VMSpec) -> list[dict[str, Any]]:
        """Oldest first; ``state`` is the power state it was taken in ("unknown" for a
        checkpoint made outside agent-swarm)."""
        if spec.kind == "project":
            return []  # none can be made (see _checkpoint_spec)
        meta = self._read_meta(spec)
        listed = self._list(spec)
        live = {str(c.get("id")) for c in listed}
        if set(meta) - live:  # records of checkpoints removed outside agent-swarm
            self._write_meta(spec, {k: v for k, v in meta.items() if k in live})
        out = []
        for c in listed:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                cid = str(c["id"])
                out.append(
                    {
                        "name": str(c["name"]),
                        "created": float(c["created_ms"]) / 1000.0,
                        "state": meta[cid]["state"] if cid in meta else "unknown",
                    }
                )
        return sorted(out, key=lambda c: c["created"])
