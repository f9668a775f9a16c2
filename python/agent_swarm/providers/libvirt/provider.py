"""The Linux provider: VMs through libvirt (qemu:///system) and QEMU, KVM or TCG."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import libvirt

from agent_swarm import paths
from agent_swarm.errors import InvalidState, ProviderError, ProviderUnavailable, Timeout
from agent_swarm.models import GUEST_USER, InstanceState, SSHEndpoint, VMSpec
from agent_swarm.providers.base import Capabilities, Provider, ProviderInfo, VMStatus
from agent_swarm.providers.libvirt import accel as accel_mod
from agent_swarm.providers.libvirt import domain as domain_mod
from agent_swarm.providers.libvirt import net, warm
from agent_swarm.providers.libvirt.domain import XMLNS_AS, domain_xml

log = logging.getLogger(__name__)
T = TypeVar("T")

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: InstanceState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: InstanceState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: InstanceState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: InstanceState.STOPPING,
    libvirt.VIR_DOMAIN_SHUTOFF: InstanceState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: InstanceState.BROKEN,
    libvirt.VIR_DOMAIN_PMSUSPENDED: InstanceState.PAUSED,
}


def _status(state: int, reason: int, dname: str) -> VMStatus:
    label = f"domain {dname}"
    st = _STATES.get(state, InstanceState.BROKEN)
    why = f"libvirt state {state} (reason {reason})" if st is InstanceState.BROKEN else None
    return VMStatus(st, why, label)


LIBVIRT_TIMEOUT = float(os.environ.get("AGENT_SWARM_LIBVIRT_TIMEOUT", "120"))
SNAPSHOT_TIMEOUT = 900.0  # a memory checkpoint writes the guest's RAM (slow under TCG)
HUNG_HINT = (
    "libvirtd seems hung (see `virsh list`); restart it: `systemctl restart libvirtd`, "
    "or as root kill it and run `libvirtd -d`"
)


def bounded(what: str, fn: Callable[..., T], *args: Any, timeout: float = LIBVIRT_TIMEOUT) -> T:
    """Call a (blocking) libvirt function, but give up after ``timeout`` seconds.

    libvirt calls block without limit when libvirtd is stuck (seen: a hung QEMU
    capabilities probe blocks every defineXML). The call keeps running in a daemon thread;
    the command fails with a clear error instead of hanging forever.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name=f"libvirt: {what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise ProviderError(
            f"{what}: libvirtd did not answer within {timeout:.0f} s", hint=HUNG_HINT
        )
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, libvirt.libvirtError):
            raise ProviderError(f"{what}: {exc.get_error_message()}") from exc
        raise exc
    return box["value"]  # type: ignore[no-any-return]


def _start_retrying(what: str, dom: libvirt.virDomain, flags: int) -> None:
    """Start a domain; retried on EAGAIN. Seen with several starts at the same instant:
    "failed to load cgroup BPF prog: Resource temporarily unavailable" (libvirt's device
    cgroup program; the kernel refuses transiently)."""
    for attempt in range(4):
        try:
            bounded(what, dom.createWithFlags, flags)
            return
        except ProviderError as exc:
            if attempt == 3 or "temporarily unavailable" not in exc.message:
                raise
            log.info("%s: %s; retrying", what, exc.message)
            time.sleep(0.5 * (attempt + 1))


def _quiet_libvirt() -> None:
    # libvirt prints every error to stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtProvider(Provider):
    name: ClassVar[str] = "libvirt"
    # ``nat`` VMs get their address from libvirt's DHCP (ssh_endpoint reads the lease), but
    # ``user`` VMs, the default, have a fixed loopback port: the core allocates one for every
    # VM, so dynamic_address stays False.
    capabilities: ClassVar[Capabilities] = Capabilities(
        disk_format="qcow2",
        snapshots=True,
        memory_snapshots=True,
        suspend=True,
        dynamic_address=False,
        warm_clones=True,
        networks=("user", "nat"),
        host_needs=("libvirtd (qemu:///system)", "qemu-system-x86_64", "passt"),
    )

    def __init__(self, uri: str | None = None) -> None:
        _quiet_libvirt()
        self.uri = uri or os.environ.get("AGENT_SWARM_LIBVIRT_URI", "qemu:///system")
        self._conn: libvirt.virConnect | None = None
        self._accel: accel_mod.Accel | None = None
        self.home = str(paths.home())
        self._tag = hashlib.sha256(self.home.encode()).hexdigest()[:6]

    # ---- connection ----
    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            try:
                self._conn = bounded("connecting to libvirtd", libvirt.open, self.uri, timeout=30)
            except ProviderError as exc:
                raise ProviderUnavailable(
                    f"cannot connect to libvirt at {self.uri}: {exc.message}",
                    hint="start it: `systemctl start libvirtd` (or `libvirtd -d` as root)",
                ) from exc
            except libvirt.libvirtError as exc:
                raise ProviderUnavailable(
                    f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}",
                    hint="start it: `systemctl start libvirtd` (or `libvirtd -d` as root)",
                ) from exc
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None

    def info(self) -> ProviderInfo:
        v = self.conn.getLibVersion()
        return ProviderInfo(
            self.name, f"libvirt {v // 1000000}.{v // 1000 % 1000}.{v % 1000}", self.capabilities
        )

    def check_host(self) -> None:
        _ = self.conn

    @property
    def accel(self) -> accel_mod.Accel:
        """KVM or TCG, probed once per provider (and cached on disk by the probe)."""
        if self._accel is None:
            self._accel = accel_mod.choose()
        return self._accel

    def startup_notice(self) -> str | None:
        return self.accel.notice

    # ---- names ----
    @property
    def _prefix(self) -> str:
        return f"agent-swarm-{self._tag}-"

    def domain_name(self, spec_or_kind: VMSpec | str, name: str | None = None) -> str:
        """``agent-swarm-<home tag>-<kind>-<name>``: unique per state directory."""
        if isinstance(spec_or_kind, VMSpec):
            kind, name = spec_or_kind.kind, spec_or_kind.name
        else:
            kind = spec_or_kind
        return f"{self._prefix}{kind}-{name}"

    def _lookup(self, dname: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(dname)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise ProviderError(f"libvirt: {exc.get_error_message()}") from exc

    def _dom(self, spec: VMSpec) -> libvirt.virDomain:
        dom = self._lookup(self.domain_name(spec))
        if dom is None:
            raise InvalidState(
                f"{spec.kind} {spec.name!r} has no libvirt domain",
                hint="`agent-swarm doctor --fix` repairs registry entries without a VM",
            )
        return dom

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except libvirt.libvirtError as exc:
            raise ProviderError(f"{what}: {exc.get_error_message()}") from exc

    # ---- lifecycle ----
    def define(self, spec: VMSpec) -> None:
        """Define (or redefine) the domain for ``spec``; idempotent."""
        dname = self.domain_name(spec)
        dom = self._lookup(dname)
        with self._errors(f"reading the definition of {dname}"):
            uuid = dom.UUIDString() if dom is not None else None
        xml = domain_xml(spec, domain_name=dname, accel=self.accel.kind, home=self.home, uuid=uuid)
        bounded(f"defining the VM for {spec.kind} {spec.name!r}", self.conn.defineXML, xml)

    def start(self, spec: VMSpec) -> None:
        dom = self._dom(spec)
        if not bounded("reading the VM state", dom.isActive):
            if net.isolated(spec):
                net.require_passt()  # before QEMU starts: no VM without its network
            _start_retrying(f"starting {spec.kind} {spec.name!r}", dom, 0)
            self._attach_network(spec, dom, just_started=True)
        else:
            if net.isolated(spec) and net.running_pid(spec) is None:
                # running, but its passt died: a new one (never powers the VM off on failure)
                self._attach_network(spec, dom, just_started=False)
            with self._errors(f"resuming {spec.kind} {spec.name!r}"):
                if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                    dom.resume()  # left paused (an interrupted save for a fork)

    def runtime_problem(self, spec: VMSpec) -> str | None:
        """Why a running VM has no network (its passt is gone), else None. Cheap when all is
        well: a PID file and /proc, no libvirt call unless passt is missing."""
        if not net.isolated(spec) or net.running_pid(spec) is not None:
            return None
        if not self._is_active(spec):
            return None
        return (
            "running, but its network process (passt) is gone: the guest has no network "
            "and SSH to it does not answer"
        )

    def _attach_network(self, spec: VMSpec, dom: libvirt.virDomain, *, just_started: bool) -> None:
        """Give a running isolated VM its network. A VM this command just started is powered
        off again if that fails (no VM without its network); one that was already running is
        left as it is."""
        if not net.isolated(spec):
            return
        try:
            net.attach(spec)
        except BaseException:
            if just_started:
                with suppress(libvirt.libvirtError):
                    dom.destroy()
            raise

    def stop(self, spec: VMSpec, *, force: bool = False, timeout: float = 90) -> None:
        """ACPI shutdown, then power off after ``timeout`` seconds (at once with ``force``)."""
        try:
            self._stop(spec, force=force, timeout=timeout)
        finally:
            with suppress(ProviderError, InvalidState):
                if not self._is_active(spec):
                    net.stop(spec)  # normally gone already: QEMU closed passt's connection

    def _is_active(self, spec: VMSpec) -> bool:
        dom = self._lookup(self.domain_name(spec))
        with self._errors("reading the VM state"):
            return dom is not None and bool(dom.isActive())

    def _stop(self, spec: VMSpec, *, force: bool, timeout: float) -> None:
        dom = self._dom(spec)
        with self._errors(f"stopping {spec.kind} {spec.name!r}"):
            if not dom.isActive():
                return
            if not force:
                with suppress(libvirt.libvirtError):
                    dom.shutdown()
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if not dom.isActive():
                        return
                    time.sleep(0.5)
                log.info("%s did not shut down in %.0f s; forcing it off", spec.name, timeout)
            try:
                bounded(f"powering off {spec.name!r}", dom.destroy)
            except ProviderError:
                if dom.isActive():
                    raise

    def delete(self, spec: VMSpec) -> None:
        """Power off and undefine (with checkpoints); "already gone" is success."""
        dom = self._lookup(self.domain_name(spec))
        if dom is None:
            net.stop(spec)
            return
        with self._errors(f"deleting the VM of {spec.kind} {spec.name!r}"):
            if dom.isActive():
                try:
                    bounded(f"powering off {spec.name!r}", dom.destroy)
                except ProviderError:
                    if dom.isActive():
                        raise
            flags = (
                libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            )
            try:
                bounded(f"undefining {spec.name!r}", dom.undefineFlags, flags)
            except ProviderError as exc:
                cause = exc.__cause__
                if not (
                    isinstance(cause, libvirt.libvirtError)
                    and cause.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
                ):
                    raise
        net.stop(spec)

    def status(self, spec: VMSpec) -> VMStatus:
        dname = self.domain_name(spec)
        try:
            dom = self._lookup(dname)
            if dom is None:
                return VMStatus(InstanceState.MISSING, "no libvirt domain", f"domain {dname}")
            state, reason = dom.state()
            return _status(state, reason, dname)
        except (libvirt.libvirtError, ProviderError, ProviderUnavailable) as exc:
            return VMStatus(InstanceState.BROKEN, str(exc), f"domain {dname}")

    def list_ours(self) -> dict[tuple[str, str], VMStatus]:
        """Every domain of this state directory, in one round trip (``list`` of 100 VMs must
        not cost 200 RPCs)."""
        stats = bounded(
            "reading VM states", self.conn.getAllDomainStats, libvirt.VIR_DOMAIN_STATS_STATE, 0
        )
        out: dict[tuple[str, str], VMStatus] = {}
        for dom, st in stats:
            dname = dom.name()
            if not dname.startswith(self._prefix):
                continue
            kind, _, name = dname[len(self._prefix) :].partition("-")
            out[(kind, name)] = _status(
                st.get("state.state", -1), st.get("state.reason", -1), dname
            )
        return out

    def owner_of(self, kind: str, name: str) -> str | None:
        """The state directory recorded in the domain's agent-swarm metadata (None: none)."""
        import xml.etree.ElementTree as ET

        dname = self.domain_name(kind, name)
        dom = self._lookup(dname)
        if dom is None:
            return None
        with self._errors(f"reading the definition of {dname}"):
            root = ET.fromstring(dom.XMLDesc(0))
        for el in root.iter(f"{{{XMLNS_AS}}}vm"):
            return el.get("home")
        return None

    def ssh_endpoint(self, spec: VMSpec) -> SSHEndpoint:
        if spec.network == "nat":
            return SSHEndpoint(self._lease_address(spec), 22, GUEST_USER)
        return SSHEndpoint("127.0.0.1", spec.ssh_port, GUEST_USER)

    def _lease_address(self, spec: VMSpec) -> str:
        dom = self._dom(spec)
        with self._errors("reading the DHCP lease"):
            ifaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
        for iface in ifaces.values():
            for addr in iface.get("addrs") or []:
                if addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    return str(addr["addr"])
        raise Timeout(f"{spec.name} has no DHCP lease yet")

    # ---- guest agent, warm templates and clones (warm.py) ----
    def guest_agent(self, spec: VMSpec) -> warm.QemuGuestAgent | None:
        return warm.QemuGuestAgent(self._dom(spec))

    def _device_layout(self, spec: VMSpec) -> str:
        """Our XML for a canonical VM of this shape: any change in the devices we generate
        (or in the shape) changes it; names, paths, ports and the MAC do not."""
        canon = dataclasses.replace(
            spec,
            kind="task",
            name="x",
            disk=Path("/d"),
            seed=Path("/s"),
            serial_log=Path("/l"),
            ssh_port=1,
            host_access=False,
            memory_file=Path("/m"),
            memory_shared=False,
            incoming=False,
            mac="52:54:00:00:00:00",
            machine="m",
        )
        xml = domain_xml(canon, domain_name="d", accel=self.accel.kind, home="/h")
        return hashlib.sha256(xml.encode()).hexdigest()[:16]

    def warm_fingerprint(self, spec: VMSpec) -> dict[str, str]:
        arch = domain_mod.host_arch()
        with self._errors("reading the host's capabilities"):
            return warm.fingerprint(
                self.conn,
                arch,
                spec.machine or domain_mod.default_machine(arch),
                domain_mod.cpu_xml(self.accel.kind),
                self._device_layout(spec),
            )

    def save_running_state(
        self,
        spec: VMSpec,
        state: Path,
        *,
        shared_memory: bool = True,
        keep_running: bool = False,
        while_paused: Callable[[], None] | None = None,
    ) -> float:
        dom = self._dom(spec)
        t0 = time.monotonic()
        try:
            warm.save(dom, state, ignore_shared=shared_memory, after=while_paused)
        finally:
            if keep_running:  # running again whatever happened: never left paused silently
                try:
                    if dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                        dom.resume()
                except libvirt.libvirtError as exc:
                    raise ProviderError(
                        f"{spec.kind} {spec.name!r} is left paused: {exc.get_error_message()}",
                        hint=f"`agent-swarm start {spec.name}` resumes it",
                    ) from exc
            else:
                with suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                net.stop(spec)
        return time.monotonic() - t0

    def resume_from_state(self, spec: VMSpec, state: Path, *, shared_memory: bool = True) -> None:
        dom = self._dom(spec)
        if net.isolated(spec):
            net.require_passt()
        _start_retrying(f"starting {spec.kind} {spec.name!r}", dom, libvirt.VIR_DOMAIN_START_PAUSED)
        try:
            warm.load(dom, state, ignore_shared=shared_memory)
            if net.isolated(spec):
                net.attach(spec)
            bounded(f"resuming {spec.kind} {spec.name!r}", dom.resume)
        except BaseException:
            with suppress(libvirt.libvirtError):
                dom.destroy()
            net.stop(spec)
            raise

    # ---- checkpoints (libvirt internal snapshots: memory too when running) ----
    def checkpoint(self, spec: VMSpec, tag: str) -> None:
        dom = self._dom(spec)
        xml = f"<domainsnapshot><name>{tag}</name></domainsnapshot>"
        bounded(
            f"checkpointing {spec.name!r}", dom.snapshotCreateXML, xml, 0, timeout=SNAPSHOT_TIMEOUT
        )

    def restore(self, spec: VMSpec, tag: str) -> None:
        dom = self._dom(spec)
        with self._errors(f"restoring {spec.name!r} to {tag!r}"):
            snap = dom.snapshotLookupByName(tag)
            qemu_before = dom.ID() if dom.isActive() else -1
        # Reverting to a checkpoint taken while the VM ran may start a new QEMU (always when
        # the VM was off; with REVERT_FORCE also when it must be restarted), and a new QEMU
        # needs a new passt. A QEMU that stays (loadvm) keeps its passt.
        bounded(
            f"restoring {spec.name!r} to {tag!r}",
            dom.revertToSnapshot,
            snap,
            libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE,
            timeout=SNAPSHOT_TIMEOUT,
        )
        if not self._is_active(spec):
            net.stop(spec)
            return
        with self._errors(f"reading the state of {spec.name!r}"):
            new_qemu = dom.ID() != qemu_before
        if new_qemu or net.running_pid(spec) is None:
            self._attach_network(spec, dom, just_started=new_qemu)

    def list_checkpoints(self, spec: VMSpec) -> list[dict[str, Any]]:
        dom = self._dom(spec)
        out = []
        with self._errors(f"listing checkpoints of {spec.name!r}"):
            for snap in dom.listAllSnapshots():
                import xml.etree.ElementTree as ET

                root = ET.fromstring(snap.getXMLDesc())
                out.append(
                    {
                        "name": snap.getName(),
                        "created": int(root.findtext("creationTime") or 0),
                        "state": root.findtext("state") or "",
                    }
                )
        out.sort(key=lambda d: (d["created"], d["name"]))
        return out
