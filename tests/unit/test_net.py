"""The libvirt provider's network plumbing, without a VM (net.py)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from agent_swarm.errors import ProviderError
from agent_swarm.models import VMSpec


def _spec(home: Path, port: int, host_access: bool = False) -> VMSpec:
    d = home / "tasks" / "t1"
    return VMSpec(
        kind="task",
        name="t1",
        cpus=1,
        memory_mib=512,
        disk=d / "disk.qcow2",
        seed=d / "cidata.iso",
        serial_log=d / "serial.log",
        ssh_port=port,
        host_access=host_access,
    )


def test_isolated_vms_use_passt_without_the_gateway_mapping(swarm_home: Path) -> None:
    pytest.importorskip("libvirt")
    from agent_swarm.providers.libvirt import net

    spec = _spec(swarm_home, 41234)
    argv = net.passt_argv("/usr/bin/passt", spec, 7, swarm_home / "passt.log")
    assert "--no-map-gw" in argv
    assert argv[argv.index("--tcp-ports") + 1] == "127.0.0.1/41234:22"
    assert argv[argv.index("--fd") + 1] == "7"
    netdev = net.qemu_netdev(spec, "n0")
    assert netdev.startswith("stream,id=n0,server=on,addr.type=unix,addr.path=")
    sock = Path(netdev.rsplit("=", 1)[1])
    assert sock.parent.stat().st_mode & 0o077 == 0  # private directory
    assert len(str(sock)) <= net.SOCKET_MAX
    # the opt-in: QEMU's user network, gateway = host loopback
    assert net.qemu_netdev(_spec(swarm_home, 41234, True), "n0") == (
        "user,id=n0,hostfwd=tcp:127.0.0.1:41234-:22"
    )


def test_a_port_taken_by_another_program_is_refused(swarm_home: Path) -> None:
    pytest.importorskip("libvirt")
    if shutil.which("passt") is None:
        pytest.skip("passt is not installed (bash ci/test.sh installs it)")
    from agent_swarm.providers.libvirt import net

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert net._listening(port)
        with pytest.raises(ProviderError, match=f"127.0.0.1:{port}.*in use by another program"):
            net.attach(_spec(swarm_home, port))
    assert not net._listening(port)
