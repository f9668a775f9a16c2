"""VM disks in the format a provider declares (``Capabilities.disk_format``).

One :class:`DiskBackend` per format, all built on :mod:`agent_swarm.native` (and
``qemu-img`` where no native writer exists):

======  ======  ================================================  ============
format  suffix  a VM's disk is                                    provider
======  ======  ================================================  ============
qcow2   .qcow2  a qcow2 overlay on its parent                     libvirt/QEMU
raw     .img    a full clone (reflink, clonefile) of its parent   macOS VZ
vhdx    .vhdx   a differencing VHDX on its parent                 Hyper-V
======  ======  ================================================  ============

A generation's chain is rewritten (:meth:`DiskBackend.detach_parent`, so that the core can
delete an older generation) only for qcow2; raw generations have no parent, and VHDX chains
are never rewritten (no tool here reads a differencing VHDX).

Example::

    from agent_swarm.disks import backend_for
    disks = backend_for(provider.info().capabilities.disk_format)
    disks.prepare_source(base_path, base_dir / f"debian-12{disks.suffix}")
    disks.overlay(vm_dir / f"disk{disks.suffix}", base_dir / f"debian-12{disks.suffix}")
"""

from __future__ import annotations

from agent_swarm.disks.base import DiskBackend
from agent_swarm.disks.qcow2 import Qcow2Backend
from agent_swarm.disks.raw import RawBackend
from agent_swarm.disks.vhdx import VhdxBackend
from agent_swarm.errors import ImageError

__all__ = ["FORMATS", "DiskBackend", "Qcow2Backend", "RawBackend", "VhdxBackend", "backend_for"]

_BACKENDS: dict[str, DiskBackend] = {
    b.format: b for b in (Qcow2Backend(), RawBackend(), VhdxBackend())
}
FORMATS: tuple[str, ...] = tuple(_BACKENDS)  # ("qcow2", "raw", "vhdx")


def backend_for(format: str) -> DiskBackend:
    """The (stateless, shared) backend of ``format``; :class:`ImageError` listing the known
    formats for any other."""
    try:
        return _BACKENDS[format]
    except (KeyError, TypeError):
        raise ImageError(
            f"unknown disk format {format!r}: known formats are {', '.join(FORMATS)}"
        ) from None
