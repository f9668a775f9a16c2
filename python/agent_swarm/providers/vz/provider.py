"""The macOS provider: Apple's Virtualization.framework, one ``agent-swarm-vz`` helper per VM.

Every VM has a directory ``<home>/vz/<kind>-<name>/``: ``vm.json`` (what the helper runs,
written here), ``efi.vars`` and ``machine-id.bin`` (made once by ``agent-swarm-vz init``: a
saved state only restores into the same machine identifier), ``state.json`` + ``vz.lock``
(the helper's, see :mod:`.helper`), ``helper.log`` and ``checkpoints/<tag>/``. The disk is the
core's raw image (``Capabilities.disk_format = "raw"``; on APFS the core's clones are
``clonefile(2)`` copies through :func:`agent_swarm.native.clone_file`).

Networking is VZ's NAT: the guest's address comes from the DHCP lease of the VM's MAC
(``dynamic_address``); the MAC is derived from the state directory, kind and name, so a VM
keeps its lease across restarts and two state directories never share one.

Warm clones are not offered: VZ restores a saved state only into a VM with the same MAC and
machine identifier, so N clones of one template would be N guests with one MAC on one NAT
(docs/macos.md says what would be needed).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from agent_swarm import paths
from agent_swarm.errors import (
    AlreadyExists,
    InstanceNotFound,
    InvalidState,
    NotFound,
    ProviderError,
    ProviderUnavailable,
    Timeout,
)
from agent_swarm.fsutil import atomic_write
from agent_swarm.models import GUEST_USER, InstanceState, SSHEndpoint, VMSpec
from agent_swarm.providers.base import Capabilities, Provider, ProviderInfo, VMStatus
from agent_swarm.providers.vz import helper as hp

VZ_DIR = "vz"
CHECKPOINTS = "checkpoints"
LEASES_ENV = "AGENT_SWARM_VZ_LEASES"  # tests: a lease file instead of /var/db/dhcpd_leases
FAKE_ENV = "AGENT_SWARM_VZ_FAKE"  # tests: knobs for the helper's fake backend (JSON object)
DEFAULT_LEASES = "/var/db/dhcpd_leases"
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SAVE_TIMEOUT = 900.0  # writing all of a VM's RAM
START_TIMEOUT = 120.0

# The helper's states → ours. Transitional ones map to what a user would call them.
_STATES = {
    "init": InstanceState.STARTING,
    "starting": InstanceState.STARTING,
    "restoring": InstanceState.STARTING,
    "running": InstanceState.RUNNING,
    "resuming": InstanceState.RUNNING,
    "pausing": InstanceState.PAUSED,
    "paused": InstanceState.PAUSED,
    "saving": InstanceState.PAUSED,
    "stopping": InstanceState.STOPPING,
    "stopped": InstanceState.STOPPING,  # still holding the lock: exiting
    "error": InstanceState.STOPPING,
}


def mac_for(home: Path, kind: str, name: str) -> str:
    """A stable, locally administered unicast MAC for this VM of this state directory."""
    digest = hashlib.sha256(f"{home}\0{kind}\0{name}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x5A, *digest[:5]))


class VZProvider(Provider):
    name: ClassVar[str] = "vz"
    capabilities: ClassVar[Capabilities] = Capabilities(
        disk_format="raw",
        snapshots=True,
        # macOS 14+ on Apple silicon; elsewhere UnsupportedByProvider (the helper says so)
        memory_snapshots=True,
        suspend=True,
        dynamic_address=True,
        warm_clones=False,
        networks=("nat",),
        host_needs=(
            "macOS 13 or newer (checkpoints of running VMs: macOS 14)",
            "the agent-swarm-vz helper, signed with com.apple.security.virtualization",
        ),
    )

    def __init__(self) -> None:
        self.home = paths.home()
        self.root = self.home / VZ_DIR
        self.binary = hp.helper_path()
        self._version: hp.HelperVersion | None = None
        self._notice: str | bool | None = False  # False: not computed yet

    # ---- host ----
    def _helper(self) -> hp.HelperVersion:
        if self._version is None:
            self._version = hp.helper_version(self.binary)
        return self._version

    def info(self) -> ProviderInfo:
        return ProviderInfo(self.name, self._helper().version, self.capabilities)

    def check_host(self) -> None:
        v = self._helper()
        if sys.platform == "darwin":
            if v.backend != "vz":
                raise ProviderUnavailable(
                    f"{self.binary} was built with the {v.backend} backend, not VZ",
                    hint=f"unset {hp.HELPER_ENV} or reinstall agent-swarm",
                )
            # The required checks `agent-swarm providers` shows (macOS version, hypervisor,
            # the helper's entitlement; the helper runs, above): the first that fails, with
            # its fix. Not the whole probe: no CPU name or APFS look-up on every command.
            from agent_swarm.providers.vz.probe import vm_checks

            for c in vm_checks(self.binary):
                if c.required and not c.ok:
                    raise ProviderUnavailable(f"{c.name}: {c.detail}", hint=c.hint)
        elif v.backend != "fake":
            raise ProviderUnavailable(
                f"Virtualization.framework is macOS-only, not {sys.platform}",
                hint="use the libvirt provider on Linux",
            )

    def startup_notice(self) -> str | None:
        """Said once: VM disks are full copies where the state directory cannot clone."""
        if self._notice is False:
            self._notice = self._clone_notice()
        return self._notice if isinstance(self._notice, str) else None

    def _clone_notice(self) -> str | None:
        from agent_swarm import native

        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = self.root / f".clone-probe-{os.getpid()}"
            probe.write_bytes(b"x")
            try:
                native.clone_file(probe, probe.with_suffix(".2"), mode="reflink")
            finally:
                probe.unlink(missing_ok=True)
                probe.with_suffix(".2").unlink(missing_ok=True)
        except OSError:
            fs = "APFS" if sys.platform == "darwin" else "a filesystem with clones (XFS, btrfs)"
            return (
                f"{self.home} is not on {fs}: every task disk is a full copy "
                "(slower, and it takes the disk's whole size)"
            )
        return None

    # ---- files ----
    def _dir(self, spec_or_kind: VMSpec | str, name: str | None = None) -> Path:
        if isinstance(spec_or_kind, VMSpec):
            kind, name = spec_or_kind.kind, spec_or_kind.name
        else:
            kind = spec_or_kind
        return self.root / f"{kind}-{name}"

    def _defined(self, spec: VMSpec) -> Path:
        d = self._dir(spec)
        if not (d / hp.CONFIG_FILE).is_file():
            raise InstanceNotFound(f"no VZ VM for {spec.kind} {spec.name!r}")
        return d

    def _config(self, spec: VMSpec, d: Path) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "name": f"{spec.kind}-{spec.name}",
            "dir": str(d),
            "cpus": spec.cpus,
            "memory_mib": spec.memory_mib,
            "disk": str(spec.disk),
            "seed": str(spec.seed),
            "mac": spec.mac or mac_for(self.home, spec.kind, spec.name),
            "console_log": str(spec.serial_log),
            "leases_file": os.environ.get(LEASES_ENV) or DEFAULT_LEASES,
            # Ours, not the helper's: who made it (owner_of) and for what (list_ours).
            "owner": str(self.home),
            "kind": spec.kind,
            "vm": spec.name,
        }
        fake = os.environ.get(FAKE_ENV)
        if fake:
            with contextlib.suppress(ValueError):
                knobs = json.loads(fake)
                if isinstance(knobs, dict):
                    cfg["fake"] = knobs
        return cfg

    @staticmethod
    def _read_config(d: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((d / hp.CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # ---- lifecycle ----
    def define(self, spec: VMSpec) -> None:
        if spec.network not in self.capabilities.networks:
            raise ProviderError(f"the vz provider has no network {spec.network!r}")
        d = self._dir(spec)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.mkdir(mode=0o700, exist_ok=True)
        atomic_write(d / hp.CONFIG_FILE, json.dumps(self._config(spec, d), indent=1), mode=0o600)
        hp.run_tool(self.binary, "init", d / hp.CONFIG_FILE)

    def start(self, spec: VMSpec) -> None:
        d = self._defined(spec)
        pid = hp.lock_holder(d)
        if pid is None:
            hp.spawn(self.binary, d, timeout=START_TIMEOUT)
            return
        st = self._live_state(d, pid)
        if st is InstanceState.PAUSED:
            hp.call(d, "resume", wait=60)
        elif st is InstanceState.STARTING:
            self._wait_for(d, {InstanceState.RUNNING}, START_TIMEOUT)
        elif st is InstanceState.STOPPING:
            hp.wait_exit(d, 60)
            hp.spawn(self.binary, d, timeout=START_TIMEOUT)
            return
        if self.runtime_problem(spec) is not None:
            self._repair_socket(d)

    def _repair_socket(self, d: Path) -> None:
        """Ask the helper (SIGUSR1) to bind its control socket again."""
        pid = hp.helper_pid(d)  # never a stale pid from vz.lock: SIGUSR1 kills by default
        if pid is None:
            raise ProviderError(f"the VM helper of {d.name} is not running")
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while self._socket_problem(d) is not None:
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"the VM helper of {d.name} did not make its control socket again",
                    hint="stop and start the VM",
                )
            time.sleep(0.05)

    def _wait_for(self, d: Path, want: set[InstanceState], timeout: float) -> InstanceState:
        deadline = time.monotonic() + timeout
        while True:
            st = self._state_of(d)
            if st in want:
                return st
            if time.monotonic() > deadline:
                raise Timeout(f"{d.name} is still {st.value} after {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self, spec: VMSpec, *, force: bool = False, timeout: float = 90) -> None:
        d = self._defined(spec)
        if hp.lock_holder(d) is None:
            return

        def request() -> None:
            if force:
                hp.call(d, "force_stop", wait=60)
            else:
                hp.call(d, "stop", wait=timeout + 60, timeout=timeout)

        try:
            try:
                request()
            except ProviderError as exc:
                # The socket is gone ($TMPDIR cleaned): a graceful stop has the helper bind it
                # again and asks the guest, rather than pulling the power through SIGTERM.
                if force or isinstance(exc, hp.HelperCallError) or self._socket_problem(d) is None:
                    raise
                self._repair_socket(d)
                request()
        except ProviderError:
            # No answer, or a state the helper cannot stop from (starting, saving): the
            # helper force-stops on SIGTERM; SIGKILL if it hangs.
            hp.kill_helper(d)
            return
        if not hp.wait_exit(d, 30):
            hp.kill_helper(d)

    def delete(self, spec: VMSpec) -> None:
        d = self._dir(spec)
        if not d.exists():
            return
        if hp.lock_holder(d) is not None:
            with contextlib.suppress(ProviderError, InstanceNotFound):  # vm.json may be gone
                self.stop(spec, force=True)
            hp.kill_helper(d)
        sock = (hp.read_state(d) or {}).get("socket")
        shutil.rmtree(d)
        # A socket in $TMPDIR (long VM directory) is removed by the helper when it exits
        # normally; after a SIGKILL it is left: remove ours.
        if isinstance(sock, str) and Path(sock).name.startswith("asvz-"):
            with contextlib.suppress(OSError):
                if Path(sock).is_socket():
                    Path(sock).unlink()

    def _live_state(self, d: Path, pid: int) -> InstanceState:
        st = hp.read_state(d) or {}
        if st.get("pid") != pid:  # the helper has not written its first state yet
            return InstanceState.STARTING
        return _STATES.get(str(st.get("state")), InstanceState.STARTING)

    def _state_of(self, d: Path) -> InstanceState:
        pid = hp.lock_holder(d)
        return InstanceState.STOPPED if pid is None else self._live_state(d, pid)

    def _label(self, d: Path) -> str:
        return f"agent-swarm-vz {d}"

    def status(self, spec: VMSpec) -> VMStatus:
        d = self._dir(spec)
        try:
            if not (d / hp.CONFIG_FILE).is_file():
                return VMStatus(InstanceState.MISSING, "no VZ VM is defined", self._label(d))
            return VMStatus(self._state_of(d), None, self._label(d))
        except OSError as exc:
            return VMStatus(InstanceState.BROKEN, f"cannot read {d}: {exc}", self._label(d))

    def list_ours(self) -> dict[tuple[str, str], VMStatus]:
        out: dict[tuple[str, str], VMStatus] = {}
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return out
        for d in entries:
            cfg = self._read_config(d) if d.is_dir() else None
            if not cfg:
                continue
            kind, name = cfg.get("kind"), cfg.get("vm")
            if not isinstance(kind, str) or not isinstance(name, str):
                continue
            if d.name != f"{kind}-{name}" or cfg.get("owner") != str(self.home):
                continue  # copied from elsewhere: not this state directory's
            try:
                out[(kind, name)] = VMStatus(self._state_of(d), None, self._label(d))
            except OSError as exc:
                out[(kind, name)] = VMStatus(InstanceState.BROKEN, str(exc), self._label(d))
        return out

    def owner_of(self, kind: str, name: str) -> str | None:
        cfg = self._read_config(self._dir(kind, name))
        owner = cfg.get("owner") if cfg else None
        return owner if isinstance(owner, str) else None

    def _socket_problem(self, d: Path) -> str | None:
        sock = (hp.read_state(d) or {}).get("socket")
        if not isinstance(sock, str) or not sock.startswith("/"):
            return "the VM helper has not published its control socket"
        try:
            with hp.Control(sock, timeout=5):
                return None
        except OSError as exc:
            return f"the VM helper's control socket {sock} does not answer ({exc.strerror or exc})"

    def runtime_problem(self, spec: VMSpec) -> str | None:
        d = self._dir(spec)
        pid = hp.lock_holder(d) if d.exists() else None
        if pid is None or self._live_state(d, pid) is not InstanceState.RUNNING:
            return None
        return self._socket_problem(d)

    # ---- access ----
    def ssh_endpoint(self, spec: VMSpec) -> SSHEndpoint:
        d = self._defined(spec)
        if self._state_of(d) is not InstanceState.RUNNING:
            raise InvalidState(f"{spec.kind} {spec.name!r} is not running")
        try:
            res = hp.call(d, "address", wait=10)
        except hp.HelperCallError as exc:
            if exc.code == "not_yet":
                raise Timeout(
                    f"{spec.name!r} has no address yet (no DHCP lease for its MAC)"
                ) from None
            raise
        return SSHEndpoint(*_parse_address(res.get("address")), GUEST_USER)

    # ---- checkpoints ----
    def _ckpt_dir(self, d: Path, tag: str) -> Path:
        if not isinstance(tag, str) or TAG_RE.fullmatch(tag) is None:
            raise ProviderError(f"invalid checkpoint name {tag!r}")
        return d / CHECKPOINTS / tag

    def checkpoint(self, spec: VMSpec, tag: str) -> None:
        from agent_swarm import native

        d = self._defined(spec)
        final = self._ckpt_dir(d, tag)
        if final.exists():
            raise AlreadyExists(f"{spec.name!r} already has a checkpoint {tag!r}")
        final.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = final.parent / f".{tag}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        try:
            st = self._state_of(d)
            if st in (InstanceState.RUNNING, InstanceState.PAUSED):
                # Pause, save devices + RAM, copy the disk while nothing writes it, resume.
                try:
                    hp.call(d, "save", wait=SAVE_TIMEOUT, path=str(tmp / "state"), then="pause")
                    native.clone_file(spec.disk, tmp / "disk.img")
                except BaseException:
                    if st is InstanceState.RUNNING:
                        with contextlib.suppress(ProviderError):  # the first error is the one
                            self._resume_after_save(d)
                    raise
                if st is InstanceState.RUNNING:
                    self._resume_after_save(d)
                power = "running" if st is InstanceState.RUNNING else "paused"
            elif st is InstanceState.STOPPED:
                native.clone_file(spec.disk, tmp / "disk.img")
                power = "shutoff"
            else:
                raise InvalidState(f"{spec.name!r} is {st.value}: try again in a moment")
            meta = {"name": tag, "created": time.time(), "state": power}
            atomic_write(tmp / "meta.json", json.dumps(meta), mode=0o600)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _resume_after_save(self, d: Path, settle: float = 60.0) -> None:
        """Resume the VM a checkpoint paused. When the save's reply did not come (no answer
        in time, connection lost), the save may still run: wait for it to end first, so that
        it neither refuses the resume nor leaves the VM paused afterwards."""
        deadline = time.monotonic() + settle
        while True:
            pid = hp.lock_holder(d)
            if pid is None:
                return
            st = hp.read_state(d) or {}
            state = st.get("state") if st.get("pid") == pid else None
            if state == "paused":
                hp.call(d, "resume", wait=60)
                return
            if state not in ("pausing", "saving") or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def restore(self, spec: VMSpec, tag: str) -> None:
        from agent_swarm import native

        d = self._defined(spec)
        ck = self._ckpt_dir(d, tag)
        meta = _read_meta(ck)
        if meta is None:
            raise NotFound(f"{spec.name!r} has no checkpoint {tag!r}")
        if hp.lock_holder(d) is not None:
            self.stop(spec, force=True)
        native.clone_file(ck / "disk.img", spec.disk, overwrite=True)
        if meta["state"] in ("running", "paused") and (ck / "state").is_file():
            hp.spawn(
                self.binary,
                d,
                restore=ck / "state",
                paused=meta["state"] == "paused",
                timeout=SAVE_TIMEOUT,
            )

    def list_checkpoints(self, spec: VMSpec) -> list[dict[str, Any]]:
        d = self._defined(spec)
        out = []
        with contextlib.suppress(FileNotFoundError):
            for ck in (d / CHECKPOINTS).iterdir():
                meta = _read_meta(ck)
                if meta is not None and not ck.name.startswith("."):
                    out.append(meta)
        return sorted(out, key=lambda m: m["created"])


def _read_meta(ck: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((ck / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(meta, dict)
        or meta.get("name") != ck.name
        or not isinstance(meta.get("created"), int | float)
        or meta.get("state") not in ("shutoff", "running", "paused")
    ):
        return None
    return {"name": meta["name"], "created": float(meta["created"]), "state": meta["state"]}


def _parse_address(raw: object) -> tuple[str, int]:
    """The helper's ``address``: an IPv4 (VZ's NAT lease), or ``ip:port`` (the fake backend,
    whose "guest" is a local sshd). Anything else is refused."""
    if not isinstance(raw, str) or len(raw) > 64:
        raise ProviderError("the VM helper reported no usable address")
    host, _, port_s = raw.partition(":")
    try:
        ip = ipaddress.IPv4Address(host)
        port = int(port_s) if port_s else 22
    except ValueError:
        raise ProviderError(f"the VM helper reported a bad address {raw[:64]!r}") from None
    if not 0 < port < 65536 or ip.is_unspecified or ip.is_multicast:
        raise ProviderError(f"the VM helper reported a bad address {raw[:64]!r}")
    return str(ip), port
