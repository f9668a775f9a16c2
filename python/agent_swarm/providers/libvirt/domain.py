"""Domain XML for agent-swarm VMs, generated here (no virt-install)."""

from __future__ import annotations

import hashlib
import os
import platform

from agent_swarm.models import VMSpec

XMLNS_QEMU = "http://libvirt.org/schemas/domain/qemu/1.0"
XMLNS_AS = "https://agent-swarm.dev/xmlns/libvirt/1"
NIC_ID = "asnet0"


def mac_for(domain_name: str) -> str:
    """A stable, locally administered MAC per domain (52:54:00 is QEMU's prefix)."""
    h = hashlib.sha256(domain_name.encode()).digest()
    return f"52:54:00:{h[0]:02x}:{h[1]:02x}:{h[2]:02x}"


def quoteattr(value: str) -> str:
    """An XML attribute value, quoted (xml.sax.saxutils pulls in urllib and ssl: slow start)."""
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        value = value.replace(a, b)
    for a, b in (("\n", "&#10;"), ("\r", "&#13;"), ("\t", "&#9;")):
        value = value.replace(a, b)
    return f'"{value}"'


def host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def default_machine(arch: str) -> str:
    return "q35" if arch == "x86_64" else "virt"


def cpu_xml(accel: str) -> str:
    return "<cpu mode='host-passthrough' check='none' migratable='off'/>" if accel == "kvm" else ""


def _qemu_opt(value: str) -> str:
    """A value inside a QEMU ``-object a=b,c=d`` option: commas are doubled."""
    return value.replace(",", ",,")


def domain_xml(
    spec: VMSpec, *, domain_name: str, accel: str, home: str, uuid: str | None = None
) -> str:
    """The domain's XML. ``uuid``: the existing domain's (libvirt refuses to redefine a
    domain under the same name with another UUID, and gives XML without one a new UUID)."""
    a = quoteattr
    arch = host_arch()
    machine = spec.machine or default_machine(arch)
    dtype = "kvm" if accel == "kvm" else "qemu"
    cpu = cpu_xml(accel)
    uid, gid = os.getuid(), os.getgid()
    mac = spec.mac or mac_for(domain_name)
    warm_args: list[str] = []
    genid = ""
    if spec.memory_file is not None:
        # Warm templates and clones: guest RAM is this file (libvirt 9 has no XML for a
        # chosen file; its own pc.ram backend is then left unused). vmgenid tells a guest
        # kernel that has the driver that it was cloned.
        share = "on" if spec.memory_shared else "off"
        warm_args += [
            "-object",
            f"memory-backend-file,id=as-mem,size={spec.memory_mib}M,"
            f"mem-path={_qemu_opt(str(spec.memory_file))},share={share}",
            "-machine",
            "memory-backend=as-mem",
        ]
        genid = "<genid/>"
    if spec.incoming:
        warm_args += ["-incoming", "defer"]
    if spec.network == "nat":
        nic = (
            "<interface type='network'><source network='default'/>"
            f"<mac address='{mac}'/><model type='virtio'/></interface>"
        )
        cmdline = ""
    else:
        from agent_swarm.providers.libvirt import net

        nic = ""
        netdev = net.qemu_netdev(spec, NIC_ID)
        device = f"virtio-net-pci,netdev={NIC_ID},mac={mac},bus=pcie.0,addr=0x10"
        cmdline = "".join(
            f"<qemu:arg value={a(v)}/>" for v in ["-netdev", netdev, "-device", device]
        )
    cmdline += "".join(f"<qemu:arg value={a(v)}/>" for v in warm_args)
    if cmdline:
        cmdline = f"<qemu:commandline>{cmdline}</qemu:commandline>"
    return f"""<domain type='{dtype}' xmlns:qemu='{XMLNS_QEMU}'>
  <name>{domain_name}</name>{f"<uuid>{uuid}</uuid>" if uuid else ""}
  <title>agent-swarm {spec.kind} {spec.name}</title>
  <metadata>
    <as:vm xmlns:as='{XMLNS_AS}' kind={a(spec.kind)} name={a(spec.name)} home={a(home)}/>
  </metadata>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>{spec.cpus}</vcpu>{genid}
  <os><type arch='{arch}' machine='{machine}'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <seclabel type='static' model='dac' relabel='no'><label>+{uid}:+{gid}</label></seclabel>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file={a(str(spec.disk))}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk' snapshot='no'>
      <driver name='qemu' type='raw'/>
      <source file={a(str(spec.seed))}/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    {nic}
    <serial type='pty'>
      <log file={a(str(spec.serial_log))} append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='virtio'/>
  </devices>
  {cmdline}
</domain>
"""
