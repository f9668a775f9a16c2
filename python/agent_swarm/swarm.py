"""The core workflows: base images, projects (set up once, sealed into templates), tasks.

This module owns disks (through :mod:`agent_swarm.native`), cloud-init seeds, keys and the
registry; providers only define, start, stop and inspect VMs.

Disk layout (``$AGENT_SWARM_HOME``)::

    base-images/<base>.qcow2              read-only after registration
    projects/<p>/gen-<n>.qcow2            sealed template generation n (mode 0444): never
                                          written again while a task uses it
    projects/<p>/disk.qcow2               the project's working disk: overlay on the newest
                                          generation (or on the base before the first seal)
    tasks/<t>/disk.qcow2                  overlay on the generation the task was cloned from

Starting the project again after a seal therefore never touches a task's backing file.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_swarm import capacity, native, paths
from agent_swarm.errors import (
    AgentSwarmError,
    AlreadyExists,
    ConfigError,
    ImageError,
    ImageNotFound,
    InstanceNotFound,
    InvalidState,
    ProjectNotFound,
    ProviderError,
    ProviderUnavailable,
    SSHError,
    Timeout,
)
from agent_swarm.fsutil import atomic_write
from agent_swarm.models import (
    BaseImage,
    InstanceState,
    JournalEntry,
    Project,
    SSHEndpoint,
    Task,
    VMSpec,
)
from agent_swarm.names import validate_name
from agent_swarm.registry import Registry

if TYPE_CHECKING:
    import paramiko

    from agent_swarm.providers.libvirt.provider import LibvirtProvider
    from agent_swarm.ssh import keys

Progress = Callable[[str], None]

BOOT_TIMEOUT = float(os.environ.get("AGENT_SWARM_BOOT_TIMEOUT", "300"))
CLOUD_INIT_TIMEOUT = float(os.environ.get("AGENT_SWARM_CLOUD_INIT_TIMEOUT", "900"))
PORT_RANGE = range(41000, 49000)
SETUP_IN_GUEST = "/var/lib/agent-swarm/setup.sh"
SETUP_LOG = "/var/log/agent-swarm-setup.log"

DEFAULT_SETUP = """\
#!/bin/bash
# agent-swarm project setup script.
#
# Runs once, as root, inside every new project VM on its first boot (after the `worker`
# user exists), before `agent-swarm project create` returns. Edit it to install what all
# your projects need; changes apply to the next `project create`. Its output is in
# /var/log/agent-swarm-setup.log inside the VM; a non-zero exit fails the create.
#
# Examples (they need network access from the VM):
#   apt-get update && apt-get install -y git build-essential
#   curl -fsSL https://get.docker.com | sh && usermod -aG docker worker
set -euo pipefail
echo "agent-swarm: project setup done on $(hostname)"
"""

# Run in the project VM just before it is sealed, so each clone boots as a new machine.
# machine-id must be *present* and "uninitialized": with the file missing, systemd cannot
# set up a transient ID on the read-only early root, and networkd's DHCP client then fails.
IDENTITY_RESET = (
    "set -e; sudo rm -f /var/lib/dbus/machine-id"
    "; echo uninitialized | sudo tee /etc/machine-id >/dev/null"
    "; sudo cloud-init clean --logs --seed"
    "; sudo sync"
    # Host keys last: while they exist the VM still answers SSH, so an interrupted reset can
    # simply be run again; once they are gone, everything else is done (see doctor).
    "; sudo rm -f /etc/ssh/ssh_host_*; sudo sync"
)


# Test hook for crash safety: `AGENT_SWARM_TEST_CRASH_AT=create:defined` makes the process
# SIGKILL itself right after recording that journal step (see tests/integration/test_ops.py).
CRASH_ENV = "AGENT_SWARM_TEST_CRASH_AT"


def _crash_point(op: str, step: str) -> None:
    if os.environ.get(CRASH_ENV) == f"{op}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


class Op:
    """An operation recorded in the registry journal; :meth:`step` records progress."""

    def __init__(self, reg: Registry, entry: int, op: str) -> None:
        self.reg, self.entry, self.op = reg, entry, op
        # Set once the operation is past the point where giving up would leave the VM in a
        # state only `doctor --fix` can finish (then a failure keeps the entry).
        self.keep_on_error: str | None = None

    def step(self, step: str, detail: str | None = None) -> None:
        self.reg.journal_step(self.entry, step, detail)
        _crash_point(self.op, step)


def stub_spec(kind: str, name: str) -> VMSpec:
    """Enough of a VM's spec to find its domain and directory (removing what is left of it)."""
    d = paths.project_dir(name) if kind == "project" else paths.task_dir(name)
    return VMSpec(
        kind=kind, name=name, cpus=1, memory_mib=256, disk=d, seed=d, serial_log=d, ssh_port=0
    )


def setup_script_path() -> Path:
    """``~/.agent-swarm/setup.sh``, created with a documented default on first use."""
    p = paths.ensure_home() / paths.SETUP_SCRIPT
    if not p.exists():
        atomic_write(p, DEFAULT_SETUP, mode=0o755)
    return p


def _disk_error(exc: OSError, what: str) -> AgentSwarmError:
    """An OSError from creating a VM's files, as a one-line user error."""
    import errno

    where = exc.filename or paths.home()
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return AgentSwarmError(
            f"{what}: no space left on the device of {where}",
            hint=f"free some space (df -h {paths.home()}), or set AGENT_SWARM_HOME elsewhere",
        )
    return AgentSwarmError(f"{what}: {exc.strerror or exc} ({where})")


MIN_FREE_BYTES = 64 << 20  # a new VM writes its overlay, seed and logs; guests write more


def _check_space(what: str) -> None:
    """Refuse before creating anything when the state directory's filesystem is (nearly) full:
    a half-created VM could not even be rolled back there (SQLite needs space to delete)."""
    home = paths.ensure_home()
    free = shutil.disk_usage(home).free
    if free < MIN_FREE_BYTES:
        raise AgentSwarmError(
            f"{what}: only {free >> 20} MiB free on the filesystem of {home}",
            hint=f"free some space (df -h {home}), or set AGENT_SWARM_HOME elsewhere",
        )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _candidate_ports() -> Iterator[int]:
    for p in PORT_RANGE:
        if _port_free(p):
            yield p


@dataclass(frozen=True)
class VMView:
    """A VM as `list`/`status` show it: registry identity + live provider state."""

    kind: str
    name: str
    project: str
    generation: int | None
    state: str
    reason: str | None
    ssh: str | None
    disk_bytes: int | None
    cpus: int
    memory_mib: int


class Swarm:
    def __init__(
        self,
        registry: Registry,
        provider: LibvirtProvider | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.reg = registry
        self._provider = provider
        self.progress: Progress = progress or (lambda s: None)

    @property
    def provider(self) -> LibvirtProvider:
        if self._provider is None:
            from agent_swarm.providers import get_provider

            provider = get_provider("libvirt")
            provider.check_host()  # connect now: fail before anything is created
            self._provider = provider  # type: ignore[assignment]
        return self._provider  # type: ignore[return-value]

    def _boot(self, spec: VMSpec) -> None:
        """Start a VM, telling the user once when it runs under emulation."""
        notice = self.provider.accel.notice
        if notice and not getattr(self, "_noticed", False):
            self._noticed = True
            self.progress(notice)
        self.provider.start(spec)

    @contextlib.contextmanager
    def journal(self, op: str, kind: str, name: str, detail: str = "") -> Iterator[Op]:
        """Record ``op`` on a VM before acting; the entry is removed when the body finishes
        (normally or by an exception it cleaned up after). A killed process leaves it for
        `doctor`."""
        entry = self.reg.journal_begin(op, kind, name, detail)
        o = Op(self.reg, entry, op)
        _crash_point(op, "begin")
        try:
            yield o
        except BaseException as exc:
            if o.keep_on_error is None:
                with contextlib.suppress(Exception):
                    self.reg.journal_end(entry)
            elif isinstance(exc, AgentSwarmError):
                exc.hint = o.keep_on_error
            raise
        else:
            self.reg.journal_end(entry)

    def running_demand(self, exclude: tuple[str, str] | None = None) -> capacity.Demand:
        """vCPUs and RAM this state directory's VMs take or are about to take: running ones
        (read live from libvirt) plus those another process is creating to boot them (a live
        `create` journal entry with detail "start"), so concurrent creates see each other."""
        from agent_swarm import procs

        counted: set[tuple[str, str]] = set()
        for dom in self.provider.our_domains():
            if dom["state"] is InstanceState.RUNNING:
                counted.add((dom["kind"], dom["name"]))
        for e in self.reg.journal():
            if e.op == "create" and e.detail == "start" and procs.alive(e.pid, e.pid_start):
                counted.add((e.kind, e.name))
        counted.discard(exclude or ("", ""))
        d = capacity.Demand()
        for kind, name in sorted(counted):
            try:
                vm: Project | Task = (
                    self.reg.get_project(name) if kind == "project" else self.reg.get_task(name)
                )
            except AgentSwarmError:
                continue  # an orphan domain, or a create not registered yet
            d = d + capacity.Demand(vm.cpus, vm.memory_mib, 1)
        return d

    def check_capacity(
        self,
        new: capacity.Demand,
        *,
        what: str,
        force: bool = False,
        exclude: tuple[str, str] | None = None,
    ) -> None:
        if force:
            return
        capacity.check(
            capacity.host(), self.running_demand(exclude), new, capacity.limits(), what=what
        )

    # ---- base images ---------------------------------------------------------------------
    def base_build(self, name: str = "debian-12") -> BaseImage:
        from agent_swarm.images import debian

        validate_name(name, "base image name")
        self._base_name_free(name)
        cached = debian.ensure_cached(self.progress)
        return self._base_import(name, cached, source="build:debian-12")

    def base_register(self, name: str, image: str) -> BaseImage:
        validate_name(name, "base image name")
        self._base_name_free(name)
        src = Path(image).expanduser()
        if not src.is_file():
            raise ImageNotFound(f"no image file at {src}", hint="give the path of a .qcow2 or .img")
        return self._base_import(name, src, source=f"file:{src.absolute()}")

    def base_download(self, name: str = "ubuntu-24-04", url: str | None = None) -> BaseImage:
        """Download a cloud image (default: Ubuntu 24.04 for this host), verify, register."""
        from agent_swarm.images import debian, download

        validate_name(name, "base image name")
        self._base_name_free(name)
        cache = debian.cache_dir().parent / "downloads"
        if url is None:
            path = download.download_ubuntu(cache, self.progress)
            source = f"url:{download.ubuntu_image()[0]}"
        else:
            download.check_url(url)  # before anything else: a plain-http URL is refused
            file_name = url.rstrip("/").rsplit("/", 1)[-1] or "image"
            sha = None
            with contextlib.suppress(AgentSwarmError):
                sha = download.sha256sums(url.rsplit("/", 1)[0] + "/SHA256SUMS").get(file_name)
            if sha is None:
                self.progress(
                    f"notice: no SHA256SUMS with an entry for {file_name} next to the "
                    "image: its integrity is not verified"
                )
            path = download.download(url, cache / file_name, sha256=sha, progress=self.progress)
            source = f"url:{url}"
        return self._base_import(name, path, source=source)

    def _base_name_free(self, name: str) -> None:
        with contextlib.suppress(ImageNotFound):
            self.reg.get_base_image(name)
            raise AlreadyExists(f"base image {name!r} already exists", hint="choose another --name")

    def _base_import(self, name: str, src: Path, *, source: str) -> BaseImage:
        from agent_swarm.images.validate import inspect_base_image

        # Untrusted header: data files, backing files, encryption, dirty/corrupt, size.
        info = inspect_base_image(src)  # before anything is copied
        d = paths.base_images_dir()
        d.mkdir(parents=True, exist_ok=True)
        dest = d / f"{name}.{info.format}"
        self.progress(f"copying the image into {d}")
        native.clone_file(src, dest, overwrite=True)
        os.chmod(dest, 0o444)
        try:
            # The copy is what VMs boot: check it too (src may have changed meanwhile).
            copied = inspect_base_image(dest)
            if (copied.format, copied.virtual_size) != (info.format, info.virtual_size):
                raise ImageError(f"{src} changed while it was copied", hint="run it again")
            return self.reg.add_base_image(
                name,
                path=str(dest),
                format=info.format,
                virtual_size=info.virtual_size,
                source=source,
            )
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    def default_base(self) -> BaseImage:
        images = self.reg.list_base_images()
        if not images:
            raise ImageNotFound(
                "there is no base image yet",
                hint="create one: `agent-swarm init-base --build debian-12` (local, no "
                "download) or `agent-swarm init-base`",
            )
        return max(images, key=lambda b: b.created_at)

    # ---- specs, seeds -------------------------------------------------------------------
    def _spec(
        self, kind: str, name: str, cpus: int, memory_mib: int, network: str, host_access: bool
    ) -> VMSpec:
        d = paths.project_dir(name) if kind == "project" else paths.task_dir(name)
        port = self.reg.port_of(kind, name) or 0
        return VMSpec(
            kind=kind,
            name=name,
            cpus=cpus,
            memory_mib=memory_mib,
            disk=d / paths.DISK_QCOW2,
            seed=d / paths.SEED_ISO,
            serial_log=d / paths.SERIAL_LOG,
            ssh_port=port,
            network=network,
            host_access=host_access,
        )

    def project_spec(self, p: Project) -> VMSpec:
        return self._spec("project", p.name, p.cpus, p.memory_mib, p.network, p.host_access)

    def task_spec(self, t: Task) -> VMSpec:
        return self._spec("task", t.name, t.cpus, t.memory_mib, t.network, t.host_access)

    def _user_data(self, host: keys.KeyPair, *, project: str, first_boot_setup: bool) -> str:
        # Imported here: `list`, `status` & co. never need them (start-up time).
        from agent_swarm.cloudinit import cloud_config
        from agent_swarm.ssh import codebridge, keys

        # agent-swarm's own key always; the user's own keys only when configured (a guest
        # holding a forwarded agent could otherwise log into every VM that trusts them).
        authorized = keys.authorized_keys(project)
        data: dict[str, Any] = {
            "users": [
                {
                    "name": "worker",
                    "shell": "/bin/bash",
                    "lock_passwd": True,
                    "sudo": "ALL=(ALL) NOPASSWD:ALL",
                    "groups": ["sudo"],
                    "ssh_authorized_keys": authorized,
                }
            ],
            "ssh_pwauth": False,
            "disable_root": True,
            "ssh_deletekeys": True,
            "ssh_keys": {
                "ed25519_private": host.private_openssh,
                "ed25519_public": host.public_openssh,
            },
            "manage_etc_hosts": True,
        }
        files: list[dict[str, Any]] = [
            {
                "path": codebridge.GUEST_SCRIPT_PATH,
                "permissions": "0755",
                "owner": "root:root",
                "encoding": "b64",
                "content": base64.b64encode(codebridge.GUEST_SCRIPT.encode()).decode(),
            }
        ]
        if first_boot_setup:
            script = setup_script_path().read_bytes()
            files.append(
                {
                    "path": SETUP_IN_GUEST,
                    "permissions": "0755",
                    "owner": "root:root",
                    "encoding": "b64",
                    "content": base64.b64encode(script).decode(),
                }
            )
            data["runcmd"] = [["sh", "-c", f"bash {SETUP_IN_GUEST} >{SETUP_LOG} 2>&1"]]
        data["write_files"] = files
        return cloud_config(data)

    def _write_seed(self, spec: VMSpec, *, first_boot_setup: bool) -> keys.KeyPair:
        from agent_swarm.cloudinit import build_seed_iso
        from agent_swarm.ssh import keys

        host = keys.generate_ed25519(f"{spec.kind}-{spec.name}")
        build_seed_iso(
            spec.seed,
            instance_id=f"{spec.name}-{uuid.uuid4()}",
            hostname=spec.name,
            user_data=self._user_data(
                host, project=self._project_of(spec), first_boot_setup=first_boot_setup
            ),
        )
        return host

    def _project_of(self, spec: VMSpec) -> str:
        return spec.name if spec.kind == "project" else self.reg.get_task(spec.name).project

    # ---- booting --------------------------------------------------------------------------
    def _wait_ready(self, spec: VMSpec, host_key: str, what: str) -> None:
        ep = self.provider.ssh_endpoint(spec)
        client = self._ssh(spec, host_key, what, timeout=BOOT_TIMEOUT)
        try:
            self.progress(f"{what}: waiting for cloud-init to finish")
            from agent_swarm.ssh.client import run_capture

            try:
                _rc, out, err = run_capture(
                    client,
                    "cloud-init status --wait >/dev/null 2>&1; cloud-init status --long",
                    timeout=CLOUD_INIT_TIMEOUT,
                )
            except Timeout as exc:
                raise Timeout(
                    f"{what}: cloud-init did not finish within {CLOUD_INIT_TIMEOUT:.0f} s",
                    hint=f"see its serial console log: {spec.serial_log}",
                ) from exc
            status = out + err
            if "status: done" not in status:
                from agent_swarm.textsafe import sanitize  # guest text: no escape sequences

                detail = " ".join(ln.strip() for ln in status.splitlines() if ln.strip())
                detail = sanitize(detail, max_len=300, keep_newlines=False, tail=True)
                setup_tail = ""
                if spec.kind == "project":
                    _, log_tail, _ = run_capture(
                        client, f"sudo tail -n 5 {SETUP_LOG} 2>/dev/null", timeout=30
                    )
                    lines = log_tail.strip().splitlines()[-5:]
                    if lines:
                        setup_tail = " | setup.sh: " + " / ".join(
                            sanitize(ln, max_len=200, keep_newlines=False) for ln in lines
                        )
                raise InvalidState(
                    f"{what}: cloud-init did not finish cleanly ({detail}){setup_tail}",
                    hint=f"log in with `agent-swarm {'project ' if spec.kind == 'project' else ''}"
                    f"ssh {spec.name}` and see /var/log/cloud-init-output.log; console log: "
                    f"{spec.serial_log}",
                )
        finally:
            client.close()
        del ep

    def _ssh(
        self, spec: VMSpec, host_key: str, what: str, timeout: float, quiet: bool = False
    ) -> paramiko.SSHClient:
        from agent_swarm.ssh import keys
        from agent_swarm.ssh.client import wait_for_ssh

        def alive() -> bool:
            return self.provider.status(spec)[0] in (InstanceState.RUNNING, InstanceState.PAUSED)

        return wait_for_ssh(
            self.provider.ssh_endpoint(spec),
            host_key,
            keys.client_key_path(),
            timeout=timeout,
            what=what,
            serial_log=spec.serial_log,
            progress=None if quiet else (lambda s: self.progress(f"{what}: {s}")),
            alive=alive,
        )

    def connect(self, kind: str, name: str) -> paramiko.SSHClient:
        """An SSH connection to a running VM (error with a hint when it is not running)."""
        if kind == "project":
            p = self.reg.get_project(name)
            spec, host_key = self.project_spec(p), p.host_key
        else:
            t = self.reg.get_task(name)
            spec, host_key = self.task_spec(t), t.host_key
        state, reason = self.provider.status(spec)
        if state is not InstanceState.RUNNING:
            cmd = f"agent-swarm {'project ' if kind == 'project' else ''}start {name}"
            raise InvalidState(
                f"{kind} {name!r} is {state.value}" + (f" ({reason})" if reason else ""),
                hint=f"start it with `{cmd}`",
            )
        return self._ssh(spec, host_key, f"{kind} {name}", timeout=60, quiet=True)

    def kind_of(self, name: str) -> str:
        """ "task" or "project" for a VM name (tasks first, as `ssh`/`run` address tasks)."""
        try:
            self.reg.get_task(name)
            return "task"
        except AgentSwarmError:
            pass
        try:
            self.reg.get_project(name)
            return "project"
        except AgentSwarmError:
            raise InstanceNotFound(
                f"no task or project named {name!r}", hint="see `agent-swarm list`"
            ) from None

    def endpoint(self, kind: str, name: str) -> SSHEndpoint:
        if kind == "project":
            return self.provider.ssh_endpoint(self.project_spec(self.reg.get_project(name)))
        return self.provider.ssh_endpoint(self.task_spec(self.reg.get_task(name)))

    # ---- projects -------------------------------------------------------------------------
    def project_create(
        self,
        name: str,
        *,
        base: str | None = None,
        cpus: int = 2,
        memory_mib: int = 2048,
        disk_gib: int = 20,
        network: str = "user",
        host_access: bool | None = None,
        wait: bool = True,
        start: bool = True,
        force: bool = False,
    ) -> Project:
        validate_name(name, "project name")
        _ = self.provider  # first: no point in the rest if this host cannot run VMs
        base_img = self.reg.get_base_image(base) if base else self.default_base()
        if disk_gib << 30 < base_img.virtual_size:
            raise ConfigError(
                f"--disk {disk_gib}G is smaller than the base image "
                f"({base_img.virtual_size / (1 << 30):.1f} GiB)",
                hint="give a larger --disk",
            )
        _check_space(f"cannot create project {name}")
        if host_access is None:
            from agent_swarm import settings  # here: `list` & co. never read config.toml

            host_access = settings.for_project(name).host_access
        with self.journal("create", "project", name, detail="start" if start else "") as op:
            self.reg.add_project(
                name,
                base_image=base_img.name,
                provider="libvirt",
                cpus=cpus,
                memory_mib=memory_mib,
                disk_gib=disk_gib,
                network=network,
                host_access=host_access,
            )
            op.step("registered")
            if start:
                # After registering (with a live journal entry): concurrent creates count
                # each other, so together they cannot oversubscribe the host.
                self._check_capacity_or_undo(
                    "project", name, capacity.Demand(cpus, memory_mib, 1), force
                )
            self.progress(f"project {name}: creating its disk on base {base_img.name}")
            spec = self._materialize(
                "project", name, base_img.path, size=disk_gib << 30, first_boot_setup=True, op=op
            )
            if start:  # still journaled: counted by concurrent capacity checks until it runs
                self.progress(f"project {name}: booting")
                self._boot(spec)
        p = self.reg.get_project(name)
        if start and wait:
            self._wait_ready(spec, p.host_key, f"project {name}")
        return p

    def _materialize(
        self,
        kind: str,
        name: str,
        backing: str,
        *,
        size: int | None,
        first_boot_setup: bool,
        op: Op,
    ) -> VMSpec:
        """Port, disk overlay, seed, pinned host key and domain for a registered VM.

        All or nothing: on any failure everything is removed again, the registry row too.
        """
        d = paths.project_dir(name) if kind == "project" else paths.task_dir(name)
        try:
            self.reg.allocate_port(kind, name, _candidate_ports())
            op.step("port")
            spec = (
                self.project_spec(self.reg.get_project(name))
                if kind == "project"
                else self.task_spec(self.reg.get_task(name))
            )
            if d.exists():
                shutil.rmtree(d)  # leftovers of a crashed create of a VM with this name
            d.mkdir(parents=True, mode=0o700)
            native.create_qcow2_overlay(spec.disk, backing, size=size)
            op.step("disk")
            host = self._write_seed(spec, first_boot_setup=first_boot_setup)
            self.reg.set_host_key(kind, name, host.public_openssh)
            op.step("seed")
            self.provider.define(spec)
            op.step("defined")
            self.refresh_ssh_config()
        except OSError as exc:
            self._rollback(kind, name)
            raise _disk_error(exc, f"cannot create {kind} {name}") from exc
        except BaseException:
            self._rollback(kind, name)
            raise
        return spec

    def refresh_ssh_config(self) -> Path:
        """Rewrite ~/.agent-swarm/ssh_config and the pinned known_hosts from the registry."""
        from agent_swarm.fsutil import file_lock
        from agent_swarm.ssh import config

        # Short lock: concurrent processes each render after their own commit; without it a
        # slower writer could put back a config that misses the other's VM.
        with file_lock(paths.home() / ".ssh_config.lock"):
            return config.write(self.reg)

    def _check_start(self, spec: VMSpec, vm: Project | Task, force: bool) -> None:
        """Capacity for booting an existing, stopped VM (its disk exists already)."""
        if self.provider.status(spec)[0] is not InstanceState.RUNNING:
            self.check_capacity(
                capacity.Demand(vm.cpus, vm.memory_mib, 0),
                what=f"starting {spec.kind} {spec.name}",
                force=force,
                exclude=(spec.kind, spec.name),
            )

    def _check_capacity_or_undo(
        self, kind: str, name: str, demand: capacity.Demand, force: bool
    ) -> None:
        try:
            self.check_capacity(
                demand, what=f"creating {kind} {name}", force=force, exclude=(kind, name)
            )
        except BaseException:
            self._rollback(kind, name)
            raise

    def _rollback(self, kind: str, name: str) -> None:
        self.remove_vm(kind, name, None, None, best_effort=True)

    def project_start(
        self, name: str, *, wait: bool = True, force: bool = False, in_op: bool = False
    ) -> None:
        p = self.reg.get_project(name)
        spec = self.project_spec(p)
        if not in_op:
            self.reg.ensure_idle("project", name)
        self._check_start(spec, p, force)
        self.progress(f"project {name}: starting")
        self._boot(spec)
        if wait:
            self._wait_ready(spec, p.host_key, f"project {name}")

    def project_stop(self, name: str, *, timeout: float = 120, seal: bool = True) -> int | None:
        """Stop the project; with ``seal`` make its disk the next template generation.

        Returns the new generation number (None when nothing was sealed).
        """
        p = self.reg.get_project(name)
        spec = self.project_spec(p)
        state, _ = self.provider.status(spec)
        if not seal:
            self.provider.stop(spec, timeout=timeout)
            return None
        latest = self.reg.latest_generation(name)
        untouched = False
        if state is not InstanceState.RUNNING:
            info = native.image_info(spec.disk, chain=False)
            untouched = info.actual_size <= info.cluster_size * 4
            if untouched and latest is not None:
                self.progress(f"project {name}: already sealed (generation {latest.generation})")
                return None
        with self.journal("seal", "project", name) as op:
            if untouched:
                # Never booted: nothing in the disk has an identity yet; seal it as it is.
                self.progress(f"project {name}: never booted; sealing its base as it is")
            else:
                if state is not InstanceState.RUNNING:
                    # Its identity must be reset from inside: boot it once more.
                    self.project_start(name, force=True, in_op=True)
                op.step("resetting")
                self._reset_identity(p, spec)
                op.step("identity-reset")
                # From here the VM has no identity (nor SSH host keys): only sealing it makes
                # sense, so a failure leaves the entry for doctor to finish.
                op.keep_on_error = (
                    f"`agent-swarm doctor --fix` finishes sealing project {name} "
                    "(its identity is already reset)"
                )
                self.progress(f"project {name}: shutting down")
                self.provider.stop(spec, timeout=timeout)
            op.step("stopped")
            return self._seal(p, spec, op)

    def _reset_identity(self, p: Project, spec: VMSpec) -> None:
        self.progress(f"project {p.name}: resetting its identity (machine-id, SSH host keys)")
        client = self._ssh(spec, p.host_key, f"project {p.name}", timeout=120)
        try:
            from agent_swarm.ssh.client import run_capture

            rc, _out, err = run_capture(client, IDENTITY_RESET, timeout=120)
            if rc != 0:
                raise SSHError(f"resetting the identity of project {p.name} failed: {err.strip()}")
        finally:
            client.close()

    def _seal(self, p: Project, spec: VMSpec, op: Op) -> int:
        latest = self.reg.latest_generation(p.name)
        n = (latest.generation if latest else 0) + 1
        gen_path = spec.disk.with_name(f"gen-{n}.qcow2")
        op.step("sealing", detail=str(gen_path))
        self.progress(f"project {p.name}: sealing template generation {n}")
        os.rename(spec.disk, gen_path)
        os.chmod(gen_path, 0o444)
        op.step("renamed")
        try:
            self.reg.add_generation(p.name, str(gen_path))
        except BaseException:
            os.chmod(gen_path, 0o644)
            os.rename(gen_path, spec.disk)
            raise
        op.step("registered")
        op.keep_on_error = f"`agent-swarm doctor --fix` finishes sealing project {p.name}"
        self._finish_seal(p, spec, gen_path, op)
        return n

    def _finish_seal(self, p: Project, spec: VMSpec, gen_path: Path, op: Op | None) -> None:
        """After a generation is registered: the project continues on a fresh overlay of it,
        as a new instance of the sealed template (no setup again). Idempotent (doctor)."""
        if not spec.disk.exists():
            native.create_qcow2_overlay(spec.disk, gen_path)
        if op:
            op.step("overlay")
        host = self._write_seed(spec, first_boot_setup=False)
        self.reg.set_host_key("project", p.name, host.public_openssh)
        if op:
            op.step("seeded")
        self.refresh_ssh_config()

    def project_delete(self, name: str) -> None:
        p = self.reg.get_project(name)
        tasks = self.reg.list_tasks(name)
        if tasks:
            raise InvalidState(
                f"project {name!r} still has task(s): " + ", ".join(t.name for t in tasks),
                hint=f"delete them first: `agent-swarm bulk delete --project {name}`",
            )
        with self.journal("delete", "project", name) as op:
            self.remove_vm("project", name, self.project_spec(p), op)

    def remove_vm(
        self,
        kind: str,
        name: str,
        spec: VMSpec | None,
        op: Op | None,
        *,
        best_effort: bool = False,
    ) -> None:
        """Registry row, domain and files of a VM. Each step tolerates "already gone", so this
        also completes an interrupted create or delete (doctor); ``best_effort`` goes on past
        failures (rolling back a failed create).

        A project's row goes first, in a transaction that refuses while a task uses it, so a
        task created concurrently can never lose its template; a crash after it leaves only
        an orphan domain and files, which doctor removes. A task's row goes last.
        """
        d = paths.project_dir(name) if kind == "project" else paths.task_dir(name)
        spec = spec or stub_spec(kind, name)
        guard = contextlib.suppress(Exception) if best_effort else contextlib.nullcontext()

        def forget() -> None:
            with contextlib.suppress(InstanceNotFound, ProjectNotFound), guard:
                if kind == "project":
                    self.reg.remove_project(name)
                else:
                    self.reg.remove_task(name)

        if kind == "project":
            forget()
        with guard:
            if best_effort and self._provider is None:
                pass  # never connected: nothing can have been defined
            else:
                self.provider.delete(spec)
        if op:
            op.step("undefined")
        shutil.rmtree(d, ignore_errors=True)
        if op:
            op.step("files-removed")
        if kind == "task":
            forget()
        with guard:
            self.refresh_ssh_config()

    # ---- tasks ----------------------------------------------------------------------------
    def task_create(
        self,
        project: str,
        name: str,
        *,
        cpus: int | None = None,
        memory_mib: int | None = None,
        wait: bool = True,
        start: bool = True,
        force: bool = False,
        check_capacity: bool = True,
        host_access: bool | None = None,
    ) -> Task:
        validate_name(name, "task name")
        _ = self.provider
        p = self.reg.get_project(project)
        _check_space(f"cannot create task {name}")
        cpus, memory_mib = cpus or p.cpus, memory_mib or p.memory_mib
        with self.journal("create", "task", name, detail="start" if start else "") as op:
            t = self.reg.add_task(
                name,
                project=project,
                provider="libvirt",
                cpus=cpus,
                memory_mib=memory_mib,
                network=p.network,
                host_access=p.host_access if host_access is None else host_access,
            )
            op.step("registered")
            if start and check_capacity:
                self._check_capacity_or_undo(
                    "task", name, capacity.Demand(cpus, memory_mib, 1), force
                )
            gen = self.reg.get_generation(project, t.generation)
            spec = self._materialize(
                "task", name, gen.path, size=None, first_boot_setup=False, op=op
            )
            t = self.reg.get_task(name)
            if start:  # still journaled: counted by concurrent capacity checks until it runs
                self.progress(
                    f"task {name}: booting (clone of {project} generation {t.generation})"
                )
                self._boot(spec)
        if start and wait:
            self._wait_ready(spec, t.host_key, f"task {name}")
        return t

    def task_start(self, name: str, *, wait: bool = True, force: bool = False) -> None:
        t = self.reg.get_task(name)
        spec = self.task_spec(t)
        self.reg.ensure_idle("task", name)
        self._check_start(spec, t, force)
        self.progress(f"task {name}: starting")
        self._boot(spec)
        if wait:
            self._ssh(spec, t.host_key, f"task {name}", timeout=BOOT_TIMEOUT).close()

    def task_stop(self, name: str, *, force: bool = False, timeout: float = 90) -> None:
        self.provider.stop(self.task_spec(self.reg.get_task(name)), force=force, timeout=timeout)

    def task_delete(self, name: str) -> None:
        t = self.reg.get_task(name)
        with self.journal("delete", "task", name) as op:
            self.remove_vm("task", name, self.task_spec(t), op)

    # ---- garbage collection of template generations -------------------------------------
    def gc_plan(self) -> list[dict[str, Any]]:
        """Generations no task pins, except each project's newest (its disk's backing)."""
        plan = []
        for p in self.reg.list_projects():
            gens = self.reg.list_generations(p.name)
            pinned = {t.generation for t in self.reg.list_tasks(p.name)}
            for g in gens[:-1]:
                if g.generation in pinned:
                    continue
                try:
                    size: int | None = native.image_info(g.path, chain=False).actual_size
                except (OSError, ValueError):
                    size = None
                plan.append(
                    {
                        "project": p.name,
                        "generation": g.generation,
                        "path": g.path,
                        "disk_bytes": size,
                    }
                )
        return plan

    def gc_remove(self, item: dict[str, Any]) -> bool:
        """Remove one unused generation: the next generation (whose backing file it is) is
        rewritten onto its own backing first, as a new file renamed into place, so its
        content is unchanged and VMs running on the old file keep it."""

        project, n = item["project"], int(item["generation"])
        with self.journal("seal", "project", project):  # no seal/gc of this project meanwhile
            gens = self.reg.list_generations(project)
            idx = next((i for i, g in enumerate(gens) if g.generation == n), None)
            if idx is None or idx == len(gens) - 1:
                return False  # the plan is stale: gone already, or the newest now
            if any(t.generation == n for t in self.reg.list_tasks(project)):
                raise InvalidState(f"generation {n} of project {project!r} is in use again")
            victim, child = gens[idx], gens[idx + 1]
            info = native.image_info(victim.path, chain=False)
            new_backing = info.backing_path  # the base image or an older generation
            child_info = native.image_info(child.path, chain=False)
            backed = child_info.backing_path is not None and os.path.realpath(
                child_info.backing_path
            ) == os.path.realpath(victim.path)
            if backed:  # (not backed: an interrupted gc already rebased it)
                self._rebase_generation(
                    project, child.generation, child.path, new_backing, info.backing_format
                )
            self.reg.remove_generation(project, n)
            Path(victim.path).unlink(missing_ok=True)
        return True

    def _rebase_generation(
        self,
        project: str,
        generation: int,
        path: str,
        new_backing: str | None,
        backing_format: str | None,
    ) -> None:
        import subprocess

        self.progress(
            f"project {project}: rebasing generation {generation} off its parent generation"
        )
        tmp = Path(path).with_name(f".gc-{generation}.qcow2.tmp")
        tmp.unlink(missing_ok=True)
        try:
            native.clone_file(path, tmp)
            os.chmod(tmp, 0o644)
            cmd = ["qemu-img", "rebase", "-f", "qcow2", "-b", new_backing or ""]
            if new_backing and backing_format:
                cmd += ["-F", str(backing_format)]
            r = subprocess.run(
                [*cmd, str(tmp)], capture_output=True, text=True, check=False, timeout=3600
            )
            if r.returncode != 0:
                raise ImageError(
                    f"rebasing generation {generation} of {project!r} failed: {r.stderr.strip()}"
                )
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # ---- checkpoints ----------------------------------------------------------------------
    def _any_spec(self, name: str) -> VMSpec:
        try:
            return self.task_spec(self.reg.get_task(name))
        except AgentSwarmError:
            return self.project_spec(self.reg.get_project(name))

    def checkpoint(self, name: str, cp: str | None = None) -> str:
        spec = self._any_spec(name)
        self.reg.ensure_idle(spec.kind, spec.name)
        cp = cp or time.strftime("cp-%Y%m%d-%H%M%S")
        validate_name(cp, "checkpoint name")
        self.provider.checkpoint(spec, cp)
        return cp

    def restore(self, name: str, cp: str | None = None) -> str:
        spec = self._any_spec(name)
        cps = self.provider.list_checkpoints(spec)
        if not cps:
            raise InvalidState(
                f"{name!r} has no checkpoints",
                hint=f"make one with `agent-swarm checkpoint {name}`",
            )
        if cp is None:
            cp = cps[-1]["name"]
        elif cp not in {c["name"] for c in cps}:
            raise InvalidState(
                f"{name!r} has no checkpoint {cp!r}", hint=f"see `agent-swarm checkpoints {name}`"
            )
        with self.journal("restore", spec.kind, spec.name, detail=cp) as op:
            op.step("reverting")
            self.provider.restore(spec, cp)
        return cp

    def checkpoints(self, name: str) -> list[dict[str, Any]]:
        return self.provider.list_checkpoints(self._any_spec(name))

    # ---- views ----------------------------------------------------------------------------
    def _view(
        self,
        kind: str,
        name: str,
        project: str,
        gen: int | None,
        spec: VMSpec,
        cpus: int,
        mem: int,
        states: dict[str, tuple[InstanceState, str | None]] | None,
        journal: dict[tuple[str, str], JournalEntry],
    ) -> VMView:
        """``states``: all domain states from one round trip (None: ask per VM)."""
        reason: str | None
        if states is not None:
            state, reason = states.get(
                self.provider.domain_name(spec), (InstanceState.MISSING, "no libvirt domain")
            )
        else:
            try:
                state, reason = self.provider.status(spec)
            except ProviderUnavailable as exc:
                state, reason = InstanceState.BROKEN, f"provider unavailable: {exc.message}"
        try:
            disk = native.image_info(spec.disk, chain=False).actual_size
        except (OSError, ValueError) as exc:
            disk = None
            if state is not InstanceState.MISSING:
                state, reason = InstanceState.BROKEN, f"disk: {exc}"
        entry = journal.get((kind, name))
        if entry is not None:
            from agent_swarm import procs

            if procs.alive(entry.pid, entry.pid_start):
                reason = f"{entry.op} in progress"
            else:
                state = InstanceState.BROKEN
                reason = (
                    f"interrupted {entry.op} (step {entry.step}); run `agent-swarm doctor --fix`"
                )
        ssh = None
        if state is InstanceState.RUNNING and spec.network == "user":
            ssh = f"127.0.0.1:{spec.ssh_port}"
        return VMView(kind, name, project, gen, state.value, reason, ssh, disk, cpus, mem)

    def _live(
        self,
    ) -> tuple[
        dict[str, tuple[InstanceState, str | None]] | None, dict[tuple[str, str], JournalEntry]
    ]:
        """All domain states (one libvirt round trip) and the journal, for list/status."""
        journal = {(e.kind, e.name): e for e in self.reg.journal()}
        try:
            return self.provider.states(), journal
        except (ProviderUnavailable, ProviderError):
            return None, journal  # per-VM status then reports why

    def list_tasks(self, project: str | None = None) -> list[VMView]:
        states, journal = self._live()
        return [
            self._view(
                "task",
                t.name,
                t.project,
                t.generation,
                self.task_spec(t),
                t.cpus,
                t.memory_mib,
                states,
                journal,
            )
            for t in self.reg.list_tasks(project)
        ]

    def list_projects(self) -> list[VMView]:
        states, journal = self._live()
        out = []
        for p in self.reg.list_projects():
            latest = self.reg.latest_generation(p.name)
            out.append(
                self._view(
                    "project",
                    p.name,
                    p.name,
                    latest.generation if latest else None,
                    self.project_spec(p),
                    p.cpus,
                    p.memory_mib,
                    states,
                    journal,
                )
            )
        return out
