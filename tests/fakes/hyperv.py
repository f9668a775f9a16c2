"""A small in-memory Hyper-V host behind a fake PowerShell, for the Hyper-V provider's tests.

:meth:`FakeHyperV.execute` stands in for running ``powershell.exe``
(:data:`agent_swarm.providers.hyperv.runner.Execute`). For every call it

1. checks the command line is what the runner must build: the fixed flags, ``-File`` and a
   shipped script, then ``-Param value`` pairs and bare switches;
2. binds the arguments to the script's real ``param()`` block (read with tree-sitter) as
   PowerShell would: an unknown parameter, a missing mandatory one, a value that is not an
   integer or fails ``[ValidatePattern]``/``[ValidateRange]`` fails the way PowerShell fails
   (a message on stderr, exit status 1, no answer);
3. records ``(script, {param: value})`` in :attr:`FakeHyperV.calls`;
4. answers as the script answers on a Hyper-V host: one framed JSON document on stdout, with
   some of the host's noise around it.

The host has VMs (several may share a name, as in Hyper-V), states (Off, Running, Paused,
Saved, and anything set by hand: "Starting", "RunningCritical"…), standard checkpoints (a
running VM's with its memory: restored, it is Saved), network adapters with a MAC, the
addresses a guest reports (KVP) or the host's neighbour cache holds, Notes, switches.

Failures: ``rights=False`` (not in Hyper-V Administrators, not elevated), ``vmms=None``
(Hyper-V not enabled) or ``"Stopped"``, ``module=False`` (no Hyper-V module: its cmdlets are
unknown), :meth:`fail_next` (the next run of a script stops with a category and message, as
Hyper-V errors do), ``hang`` (scripts that never finish: the runner's timeout), ``raw``
(scripts whose stdout is replaced: malformed answers).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_swarm.providers.hyperv.runner import (
    FLAGS,
    FRAME_END,
    FRAME_START,
    SCRIPTS_DIR,
    Completed,
)
from support.powershell import Param, script_params

NOISE_BEFORE = "WARNING: The names of some imported commands include unapproved verbs.\r\n"
NOISE_AFTER = "\r\n"


class _Stop(Exception):
    """A script stopped with an error answer."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category
        self.message = message


@dataclass
class FakeSnapshot:
    id: str
    name: str
    created_ms: int
    vm_state: str  # the VM's state when taken
    disk: str  # the VM's disk then (restored with it)
    type: str = "Standard"


@dataclass
class FakeVM:
    name: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "Off"
    status: str = "Operating normally"
    notes: str = ""
    disk: str = ""  # the attached disk (a checkpoint's .avhdx after one is made)
    dvd: str = ""
    switch: str = ""  # "" : the adapter is connected to none
    adapters: int = 1
    cpus: int = 1
    memory_mib: int = 512
    generation: int = 2
    secure_boot_template: str = "MicrosoftWindows"
    first_boot: str = ""
    checkpoint_type: str = "Production"
    automatic_checkpoints: bool = True
    path: str = ""
    mac: str = field(default_factory=lambda: "00155D" + uuid.uuid4().hex[:6].upper())
    snapshots: list[FakeSnapshot] = field(default_factory=list)
    kvp: list[str] = field(default_factory=list)  # what hv_kvp_daemon reports
    disk_grants: int = 0  # times Hyper-V granted the VM access to its disk (attach/re-attach)


def _is_vhdx(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"vhdxfile"
    except OSError:
        return False


def _is_iso(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0x8001)
            return f.read(5) == b"CD001"
    except OSError:
        return False


class FakeHyperV:
    def __init__(self, *, switches: Sequence[str] = ("Default Switch",)) -> None:
        self.vms: list[FakeVM] = []
        self.switches = {s: "Internal" for s in switches}
        self.calls: list[tuple[str, dict[str, str | bool]]] = []
        self.argv: list[list[str]] = []
        self.rights = True
        self.vmms: str | None = "Running"
        self.module = True
        self.hypervisor_present = True
        self.windows = {
            "product": "Windows 10 Pro",
            "edition": "Professional",
            "build": "22631",
            "ubr": "3880",
            "display_version": "23H2",
            "installation_type": "Client",
        }
        self.filesystem = "NTFS"
        self.kvp = True  # guests run hv_kvp_daemon (their addresses show in IPAddresses)
        self.address_delay = 0  # address queries of a running VM before it has a lease
        self.neighbors: dict[str, str] = {}  # MAC (00-15-5D-…) -> IPv4, the host's ARP cache
        self.guest_shutdown = False  # guests act on a shutdown request (the contract's don't)
        self.hang: set[str] = set()
        self.raw: dict[str, bytes] = {}
        self.noise = True
        self._fail: dict[str, tuple[str, str]] = {}
        self._queries: dict[str, int] = {}
        self._leases = 0

    # ---- for tests ----
    def fail_next(self, script: str, category: str, message: str) -> None:
        self._fail[script] = (category, message)

    def vm(self, name: str) -> FakeVM:
        (vm,) = [v for v in self.vms if v.name == name]
        return vm

    def scripts_called(self) -> list[str]:
        return [s for s, _ in self.calls]

    # ---- the fake PowerShell ----
    def execute(self, argv: Sequence[str], timeout: float) -> Completed:
        argv = list(argv)
        self.argv.append(argv)
        assert argv[1:5] == list(FLAGS), argv
        assert argv[5] == "-File", argv
        script = Path(argv[6])
        assert script.parent == SCRIPTS_DIR and script.is_file(), script
        bound = self._bind(script, argv[7:])
        if isinstance(bound, Completed):
            return bound
        self.calls.append((script.name, bound))
        if script.name in self.hang:
            raise subprocess.TimeoutExpired(argv, timeout)
        if script.name in self.raw:
            return Completed(0, self.raw[script.name], b"")
        try:
            failure = self._fail.pop(script.name, None)
            if failure:
                raise _Stop(*failure)
            handler = getattr(self, "_" + script.stem.replace("-", "_"))
            answer: dict[str, Any] = {"ok": True, "result": handler(bound)}
            code = 0
        except _Stop as exc:
            answer = {
                "ok": False,
                "error": {
                    "category": exc.category,
                    "message": exc.message,
                    "type": "Microsoft.HyperV.PowerShell.VirtualizationException",
                    "id": "InvalidOperation,Microsoft.HyperV.PowerShell.Commands.FakeCommand",
                    "command": "",
                },
            }
            code = 1
        out = f"{FRAME_START}\n{json.dumps(answer, separators=(',', ':'))}\n{FRAME_END}\n"
        if self.noise:
            out = NOISE_BEFORE + out + NOISE_AFTER
        return Completed(code, out.encode(), b"")

    def _bind(self, script: Path, args: list[str]) -> dict[str, str | bool] | Completed:
        """PowerShell's parameter binding against the script's param() block."""
        declared = script_params(script)
        bound: dict[str, str | bool] = {}
        i = 0
        while i < len(args):
            tok = args[i]
            if not tok.startswith("-") or len(tok) < 2:
                return _binder_error(
                    f"A positional parameter cannot be found that accepts argument '{tok}'."
                )
            name = tok[1:]
            param = declared.get(name.lower())
            if param is None:
                return _binder_error(
                    f"A parameter cannot be found that matches parameter name '{name}'."
                )
            if param.type == "switch":
                bound[param.name] = True
                i += 1
                continue
            if i + 1 >= len(args):
                return _binder_error(f"Missing an argument for parameter '{name}'.")
            value = args[i + 1]
            problem = _validate(param, value)
            if problem:
                return _binder_error(
                    f"Cannot validate argument on parameter '{param.name}'. {problem}"
                )
            bound[param.name] = value
            i += 2
        missing = [p.name for p in declared.values() if p.mandatory and p.name not in bound]
        if missing:
            return _binder_error(
                "Cannot process command because of one or more missing mandatory parameters: "
                + " ".join(missing)
                + "."
            )
        return bound

    # ---- helpers of the "scripts" ----
    def _assert_host(self) -> None:
        if not self.rights:
            raise _Stop(
                "not-elevated",
                "HOST\\me is not in the Hyper-V Administrators group and this is not an "
                "elevated (administrator) session",
            )
        if self.vmms is None:
            raise _Stop("hyperv-missing", "Hyper-V is not enabled on this computer")
        if self.vmms != "Running":
            raise _Stop("service-stopped", f"the vmms service is {self.vmms}, not running")
        if not self.module:
            raise _Stop(
                "module-missing",
                "The term 'Get-VM' is not recognized as the name of a cmdlet, function, "
                "script file, or operable program.",
            )

    def _find(self, name: str, *, allow_missing: bool = False) -> FakeVM | None:
        found = [v for v in self.vms if v.name.lower() == name.lower()]
        if len(found) > 1:
            raise _Stop("ambiguous", f"Hyper-V has {len(found)} VMs named {name}")
        if not found:
            if allow_missing:
                return None
            raise _Stop("not-found", f"Hyper-V has no VM named {name}")
        return found[0]

    def _get(self, name: str) -> FakeVM:
        vm = self._find(name)
        assert vm is not None
        return vm

    @staticmethod
    def _facts(vm: FakeVM) -> dict[str, Any]:
        return {
            "name": vm.name,
            "id": vm.id,
            "state": vm.state,
            "status": vm.status,
            "notes": vm.notes,
        }

    def _turn_off(self, vm: FakeVM) -> None:
        vm.state = "Off"

    # ---- the scripts, as they behave on Hyper-V ----
    def _host_check(self, p: dict[str, Any]) -> dict[str, Any]:
        rights = {"user": "HOST\\me", "elevated": False, "hyperv_admin": self.rights}
        can_ask = self.rights and self.vmms == "Running" and self.module
        switch = None
        if can_ask:
            name = p["SwitchName"]
            switch = {"found": name in self.switches, "type": self.switches.get(name, "")}
        return {
            "windows": dict(self.windows),
            "rights": rights,
            "hypervisor_present": self.hypervisor_present,
            "virtualization_firmware": False,
            "vmms": None if self.vmms is None else {"status": self.vmms},
            "module": {"version": "2.0.0.0"} if self.module else None,
            "feature": None,
            "switch": switch,
            "filesystem": {"root": "C:\\", "format": self.filesystem}
            if p.get("StatePath")
            else None,
            "powershell": "5.1.22621.2506",
            "errors": [],
        }

    def _define(self, p: dict[str, Any]) -> dict[str, Any]:
        self._assert_host()
        for f in (p["Disk"], p["Seed"]):
            if not Path(f).is_file():
                raise _Stop("other", f"{f} does not exist")
        if p["SwitchName"] not in self.switches:
            raise _Stop(
                "switch-missing", f"Hyper-V has no virtual switch named '{p['SwitchName']}'"
            )
        if not _is_vhdx(p["Disk"]):
            raise _Stop("other", f"'{p['Disk']}' is not a virtual hard disk file.")
        if not _is_iso(p["Seed"]):
            raise _Stop("other", f"'{p['Seed']}' is not an ISO image.")
        memory = int(p["MemoryMiB"])
        if memory % 2:
            raise _Stop("other", "The memory must be a multiple of 2 MB.")
        vm = self._find(p["Name"], allow_missing=True)
        created = vm is None
        if vm is None:
            vm = FakeVM(
                p["Name"],
                disk=p["Disk"],
                switch=p["SwitchName"],
                memory_mib=memory,
                path=p["ConfigPath"],
            )
            vm.disk_grants += 1
            self.vms.append(vm)
        if vm.state != "Off":
            vm.notes = p["Notes"]
            return {"created": created, "updated": False, "state": vm.state, "id": vm.id}
        vm.cpus = int(p["Cpus"])
        vm.memory_mib = memory
        vm.notes = p["Notes"]
        vm.checkpoint_type = "Standard"
        vm.automatic_checkpoints = False
        if not vm.snapshots:
            vm.disk = p["Disk"]
            vm.disk_grants += 1
        vm.dvd = p["Seed"]
        if vm.switch != p["SwitchName"]:
            vm.switch = p["SwitchName"]
        vm.secure_boot_template = "MicrosoftUEFICertificateAuthority"
        vm.first_boot = "disk"
        return {"created": created, "updated": True, "state": vm.state, "id": vm.id}

    def _start(self, p: dict[str, Any]) -> dict[str, Any]:
        self._assert_host()
        vm = self._get(p["Name"])
        was = vm.state
        if was not in ("Off", "Saved", "Paused", "Running"):
            raise _Stop(
                "invalid-state",
                f"{vm.name} is {was} ({vm.status}); try again once it is off or running",
            )
        repaired = []
        if was == "Off":
            if not vm.snapshots:
                vm.disk = p["Disk"]
                vm.disk_grants += 1
            vm.dvd = p["Seed"]
        if vm.adapters and vm.switch != p["SwitchName"]:
            vm.switch = p["SwitchName"]
            repaired.append("network")
        if was != "Running":
            if was in ("Off", "Saved") and not _is_vhdx(vm.disk) and not vm.snapshots:
                raise _Stop("other", f"'{vm.name}' failed to start. ('{vm.disk}' cannot be opened)")
            vm.state = "Running"
        return {"state": vm.state, "was": was, "repaired": repaired}

    def _stop(self, p: dict[str, Any]) -> dict[str, Any]:
        self._assert_host()
        vm = self._get(p["Name"])
        was = vm.state
        if was in ("Off", "Saved"):
            return {"state": was, "was": was, "forced": False}
        forced = True
        graceful = not p.get("Force") and was == "Running" and int(p["TimeoutSeconds"]) > 0
        if graceful and self.guest_shutdown:
            vm.state = "Off"
            forced = False
        if vm.state != "Off":
            self._turn_off(vm)
        return {"state": vm.state, "was": was, "forced": forced}

    def _remove(self, p: dict[str, Any]) -> dict[str, Any]:
        self._assert_host()
        vm = self._find(p["Name"], allow_missing=True)
        if vm is None:
            return {"removed": False, "path": None}
        self.vms.remove(vm)
        return {"removed": True, "path": vm.path}

    def _status(self, p: dict[str, Any]) -> dict[str, Any]:
        self._assert_host()
        vm = self._find(p["Name"], allow_missing=True)
        if vm is None:
            return {"found": False}
        facts = self._facts(vm)
        facts.update(switch=vm.switch if vm.adapters else "", adapters=vm.adapters)
        facts.update(checkpoints=len(vm.snapshots), found=True)
        return facts

    def _list(self, p: dict[str, Any]) -> dict[str, Any]:
        self._assert_host()
        prefix = p["Prefix"].lower()
        return {"vms": [self._facts(v) for v in self.vms if v.name.lower().startswith(prefix)]}

    def _checkpoint(self, p: dict[str, Any]) -> dict[str, Any]:
        self._assert_host()
        vm = self._get(p["Name"])
        if any(s.name == p["Checkpoint"] for s in vm.snapshots):
            raise _Stop("exists", f"{vm.name} already has a checkpoint named {p['Checkpoint']}")
        if vm.state not in ("Off", "Saved", "Running", "Paused"):
            raise _Stop(
                "invalid-state", f"{vm.name} is {vm.state}; try again once it is off or running"
            )
        snap = FakeSnapshot(
            str(uuid.uuid4()), p["Checkpoint"], int(time.time() * 1000), vm.state, vm.disk
        )
        vm.snapshots.append(snap)
        # Hyper-V: the VM writes into a new differencing disk beside the old one from now on.
        disk = Path(vm.disk)
        vm.disk = str(disk.with_name(f"{disk.stem.split('_')[0]}_{snap.id.upper()}.avhdx"))
        return {
            "id": snap.id,
            "name": snap.name,
            "created_ms": snap.created_ms,
            "vm_state": snap.vm_state,
        }

    def _checkpoints(self, p: dict[str, Any]) -> dict[str, Any]:
        self._assert_host()
        vm = self._get(p["Name"])
        snaps = sorted(vm.snapshots, key=lambda s: s.created_ms)
        return {
            "checkpoints": [
                {"id": s.id, "name": s.name, "created_ms": s.created_ms, "type": s.type}
                for s in snaps
            ]
        }

    def _restore(self, p: dict[str, Any]) -> dict[str, Any]:
        self._assert_host()
        vm = self._get(p["Name"])
        matching = [s for s in vm.snapshots if s.name == p["Checkpoint"]]
        if not matching:
            raise _Stop(
                "checkpoint-not-found", f"{vm.name} has no checkpoint named {p['Checkpoint']}"
            )
        snap = matching[0]
        if vm.state not in ("Off", "Saved"):
            self._turn_off(vm)
        vm.disk = str(Path(snap.disk).with_name(f"restored_{uuid.uuid4().hex[:8]}.avhdx"))
        vm.state = "Saved" if snap.vm_state in ("Running", "Paused") else "Off"
        if p.get("Start") and vm.state == "Saved":
            vm.state = "Paused" if p.get("Pause") else "Running"
        return {"state": vm.state}

    def _address(self, p: dict[str, Any]) -> dict[str, Any]:
        self._assert_host()
        vm = self._get(p["Name"])
        answer: dict[str, Any] = {"state": vm.state, "mac": "", "kvp": [], "neighbors": []}
        if vm.state != "Running" or not vm.adapters:
            return answer
        answer["mac"] = vm.mac
        n = self._queries.get(vm.id, 0)
        self._queries[vm.id] = n + 1
        if n < self.address_delay or not vm.switch:
            return answer  # no lease yet / no network
        if not vm.kvp and not self.neighbors.get(_dashed(vm.mac)):
            self._leases += 1
            lease = f"198.51.100.{self._leases & 255 or 1}"  # TEST-NET-2: data only
            if self.kvp:
                vm.kvp = [lease, "fe80::215:5dff:fe00:1"]
            else:
                self.neighbors[_dashed(vm.mac)] = lease
        answer["kvp"] = list(vm.kvp) if self.kvp else []
        if not answer["kvp"]:
            ip = self.neighbors.get(_dashed(vm.mac))
            answer["neighbors"] = [ip] if ip else []
        return answer


def _dashed(mac: str) -> str:
    return "-".join(mac[i : i + 2] for i in range(0, 12, 2)).upper()


def _validate(param: Param, value: str) -> str | None:
    if param.type == "int":
        if not re.fullmatch(r"[+-]?\d+", value):
            return f'Cannot convert value "{value}" to type "System.Int32".'
        if param.range and not param.range[0] <= int(value) <= param.range[1]:
            lo, hi = param.range
            return f"The {value} argument is not in the range {lo}..{hi}."
    if param.pattern and not re.search(param.pattern, value, re.IGNORECASE):
        return f'The argument "{value}" does not match the "{param.pattern}" pattern.'
    return None


def _binder_error(message: str) -> Completed:
    """PowerShell's own failure before the script runs: no answer, exit status 1."""
    text = f"{message}\r\n    + CategoryInfo          : InvalidArgument\r\n"
    return Completed(1, b"", text.encode())
