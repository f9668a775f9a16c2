"""Provider registry: names → lazily imported implementations and host probes.

Nothing is imported until a provider is chosen, so macOS never imports libvirt and
``agent-swarm --help`` stays fast. Each provider package has a ``probe`` module that only
looks at the host (binaries, sockets, devices) and imports no heavy dependency.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from agent_swarm.errors import ConfigError, ProviderUnavailable

if TYPE_CHECKING:
    from agent_swarm.providers.base import ProbeResult, Provider

# name -> (implementation "module:Class", probe "module:function")
PROVIDERS: dict[str, tuple[str, str]] = {
    "libvirt": (
        "agent_swarm.providers.libvirt.provider:LibvirtProvider",
        "agent_swarm.providers.libvirt.probe:probe",
    ),
    "vz": ("agent_swarm.providers.vz.provider:VZProvider", "agent_swarm.providers.vz.probe:probe"),
    "hyperv": (
        "agent_swarm.providers.hyperv.provider:HyperVProvider",
        "agent_swarm.providers.hyperv.probe:probe",
    ),
}

INSTALL_HINTS = {
    "libvirt": "pip install 'agent-swarm[libvirt]' (needs libvirt-dev and pkg-config to build)",
}


def default_provider_name(platform: str | None = None) -> str:
    p = platform or sys.platform
    return {"darwin": "vz", "win32": "hyperv"}.get(p, "libvirt")


def _load(ref: str) -> object:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _check_name(name: str) -> tuple[str, str]:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown provider {name!r}", hint=f"choose one of: {', '.join(PROVIDERS)}"
        ) from None


def probe(name: str) -> ProbeResult:
    _, probe_ref = _check_name(name)
    fn = _load(probe_ref)
    result: ProbeResult = fn()  # type: ignore[operator]
    return result


def probe_all() -> list[ProbeResult]:
    return [probe(n) for n in PROVIDERS]


def get_provider(name: str | None = None) -> Provider:
    """Instantiate a provider after checking the host can run it."""
    name = name or default_provider_name()
    impl_ref, _ = _check_name(name)
    result = probe(name)
    if not result.available:
        failing = next(c for c in result.checks if c.required and not c.ok)
        raise ProviderUnavailable(
            f"the {name} provider cannot run on this host: {failing.detail}",
            hint=failing.hint,
        )
    try:
        cls = _load(impl_ref)
    except ImportError as exc:
        raise ProviderUnavailable(
            f"the {name} provider could not be loaded: {exc}",
            hint=INSTALL_HINTS.get(name),
        ) from exc
    provider: Provider = cls()  # type: ignore[operator]
    return provider
