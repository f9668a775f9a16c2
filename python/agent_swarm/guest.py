"""What the core does *inside* a guest: its cloud-init seed, its identity, its readiness.

Talks to the guest through a :class:`~agent_swarm.providers.base.GuestSession`: SSH with the
pinned host key, or the provider's own channel where it offers one (the test fake; vsock
later). The SSH address is asked from the provider on every connection attempt, so guests
whose address appears only after boot (a DHCP lease) work the same as forwarded ports.
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_swarm import paths
from agent_swarm.errors import InvalidState, SSHError, Timeout
from agent_swarm.fsutil import atomic_write
from agent_swarm.models import GUEST_USER, InstanceState, VMSpec

if TYPE_CHECKING:
    import paramiko

    from agent_swarm.core import Core
    from agent_swarm.providers.base import GuestSession, Provider
    from agent_swarm.ssh import keys

BOOT_TIMEOUT = float(os.environ.get("AGENT_SWARM_BOOT_TIMEOUT", "300"))
CLOUD_INIT_TIMEOUT = float(os.environ.get("AGENT_SWARM_CLOUD_INIT_TIMEOUT", "900"))
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


def setup_script_path() -> Path:
    """``~/.agent-swarm/setup.sh``, created with a documented default on first use."""
    p = paths.ensure_home() / paths.SETUP_SCRIPT
    if not p.exists():
        atomic_write(p, DEFAULT_SETUP, mode=0o755)
    return p


def user_data(host: keys.KeyPair, *, project: str, first_boot_setup: bool) -> str:
    """cloud-init user data: the `worker` user with our key, the pinned host key, the
    code-bridge script and (first boot of a project) the setup script."""
    # Imported here: `list`, `status` & co. never need them (start-up time).
    from agent_swarm.cloudinit import cloud_config
    from agent_swarm.ssh import codebridge, keys

    # agent-swarm's own key always; the user's own keys only when configured (a guest
    # holding a forwarded agent could otherwise log into every VM that trusts them).
    data: dict[str, Any] = {
        "users": [
            {
                "name": GUEST_USER,
                "shell": "/bin/bash",
                "lock_passwd": True,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "groups": ["sudo"],
                "ssh_authorized_keys": keys.authorized_keys(project),
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
    files: list[dict[str, Any]] = [_file(codebridge.GUEST_SCRIPT_PATH, codebridge.GUEST_SCRIPT)]
    if first_boot_setup:
        files.append(_file(SETUP_IN_GUEST, setup_script_path().read_bytes()))
        data["runcmd"] = [["sh", "-c", f"bash {SETUP_IN_GUEST} >{SETUP_LOG} 2>&1"]]
    data["write_files"] = files
    return cloud_config(data)


def _file(path: str, content: str | bytes) -> dict[str, Any]:
    raw = content.encode() if isinstance(content, str) else content
    return {
        "path": path,
        "permissions": "0755",
        "owner": "root:root",
        "encoding": "b64",
        "content": base64.b64encode(raw).decode(),
    }


def new_host_key(kind: str, name: str) -> keys.KeyPair:
    from agent_swarm.ssh import keys

    return keys.generate_ed25519(f"{kind}-{name}")


def write_seed(spec: VMSpec, host: keys.KeyPair, *, project: str, first_boot_setup: bool) -> None:
    """The NoCloud seed ISO a new instance boots with (new instance-id: cloud-init runs)."""
    from agent_swarm.cloudinit import build_seed_iso

    build_seed_iso(
        spec.seed,
        instance_id=f"{spec.name}-{uuid.uuid4()}",
        hostname=spec.name,
        user_data=user_data(host, project=project, first_boot_setup=first_boot_setup),
    )


class _SSHSession:
    """A paramiko connection as a :class:`GuestSession`."""

    def __init__(self, client: paramiko.SSHClient) -> None:
        self.client = client

    def run(self, command: str, timeout: float) -> tuple[int, str, str]:
        from agent_swarm.ssh.client import run_capture

        return run_capture(self.client, command, timeout=timeout)

    def close(self) -> None:
        self.client.close()


class Guest:
    """Readiness, identity reset and connections for the core's VMs."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def connect_ssh(
        self,
        provider: Provider,
        spec: VMSpec,
        host_key: str,
        what: str,
        timeout: float,
        quiet: bool = False,
    ) -> paramiko.SSHClient:
        """SSH with the pinned key, retried until ``timeout``; the address is asked from the
        provider on every attempt."""
        from agent_swarm.ssh import keys
        from agent_swarm.ssh.client import wait_for_ssh

        def alive() -> bool:
            return provider.status(spec).state in (InstanceState.RUNNING, InstanceState.PAUSED)

        progress = self.core.progress
        return wait_for_ssh(
            lambda: provider.ssh_endpoint(spec),
            host_key,
            keys.client_key_path(),
            timeout=timeout,
            what=what,
            serial_log=spec.serial_log,
            progress=None if quiet else (lambda s: progress(f"{what}: {s}")),
            alive=alive,
        )

    def session(
        self, provider: Provider, spec: VMSpec, host_key: str, what: str, timeout: float
    ) -> GuestSession:
        own = provider.guest_session(spec)
        if own is not None:
            return own
        return _SSHSession(self.connect_ssh(provider, spec, host_key, what, timeout))

    def answers(self, provider: Provider, spec: VMSpec, host_key: str, what: str) -> bool:
        """Does the running VM accept a session with its pinned host key? (Then an interrupted
        identity reset had not removed the host keys yet, and can simply run again.)"""
        from agent_swarm.errors import AgentSwarmError

        if provider.status(spec).state is not InstanceState.RUNNING:
            return False
        try:
            self.session(provider, spec, host_key, what, timeout=20).close()
        except (AgentSwarmError, OSError):
            return False
        return True

    def wait_ready(self, provider: Provider, spec: VMSpec, host_key: str, what: str) -> None:
        """Until the guest answers and cloud-init is done (its setup script too)."""
        s = self.session(provider, spec, host_key, what, timeout=BOOT_TIMEOUT)
        try:
            self.core.progress(f"{what}: waiting for cloud-init to finish")
            try:
                _rc, out, err = s.run(
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
                raise self._not_done(s, spec, status, what)
        finally:
            s.close()

    def _not_done(self, s: GuestSession, spec: VMSpec, status: str, what: str) -> InvalidState:
        from agent_swarm.textsafe import sanitize  # guest text: no escape sequences

        detail = " ".join(ln.strip() for ln in status.splitlines() if ln.strip())
        detail = sanitize(detail, max_len=300, keep_newlines=False, tail=True)
        setup_tail = ""
        if spec.kind == "project":
            _, log_tail, _ = s.run(f"sudo tail -n 5 {SETUP_LOG} 2>/dev/null", timeout=30)
            lines = log_tail.strip().splitlines()[-5:]
            if lines:
                setup_tail = " | setup.sh: " + " / ".join(
                    sanitize(ln, max_len=200, keep_newlines=False) for ln in lines
                )
        return InvalidState(
            f"{what}: cloud-init did not finish cleanly ({detail}){setup_tail}",
            hint=f"log in with `agent-swarm {'project ' if spec.kind == 'project' else ''}"
            f"ssh {spec.name}` and see /var/log/cloud-init-output.log; console log: "
            f"{spec.serial_log}",
        )

    def reset_identity(self, provider: Provider, spec: VMSpec, host_key: str) -> None:
        """machine-id, cloud-init state and SSH host keys, so each clone boots as new."""
        what = f"{spec.kind} {spec.name}"
        self.core.progress(f"{what}: resetting its identity (machine-id, SSH host keys)")
        s = self.session(provider, spec, host_key, what, timeout=120)
        try:
            rc, _out, err = s.run(IDENTITY_RESET, timeout=120)
            if rc != 0:
                raise SSHError(f"resetting the identity of {what} failed: {err.strip()}")
        finally:
            s.close()
