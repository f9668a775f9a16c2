"""Provider registry: names → lazily imported implementations and host probes.

Nothing is imported until a provider is chosen, so macOS never imports libvirt and
``agent-swarm --help`` stays fast. Each provider package has a ``probe`` module that only
looks at the host (binaries, sockets, devices) and imports no heavy dependency.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

from agent_swarm.errors import ConfigError, ProviderUnavailable

if TYPE_CHECKING:
    from agent_swarm.providers.base import Capabilities, ProbeResult, Provider

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

# Extra providers for tests ("name=module:Class[,name=module:Class]"): the fake provider of
# tests/fakes registers itself this way. Its probe is the class's ``probe`` classmethod.
TEST_PROVIDERS_ENV = "AGENT_SWARM_TEST_PROVIDERS"
# The provider new projects use when none is given (default: this platform's).
DEFAULT_ENV = "AGENT_SWARM_PROVIDER"


def _test_providers() -> dict[str, str]:
    out = {}
    for item in os.environ.get(TEST_PROVIDERS_ENV, "").split(","):
        name, sep, ref = item.strip().partition("=")
        if sep and name and ref:
            out[name] = ref
    return out


INSTALL_HINTS = {
    # libvirt-python has no wheels: the distribution's package (python3-libvirt) needs no
    # compiler; the same text as the probe's (providers/libvirt/probe.py).
    "libvirt": "apt install python3-libvirt and use a venv with --system-site-packages "
    "(pipx install --python /usr/bin/python3 --system-site-packages agent-swarm), or build "
    "it: apt install libvirt-dev pkg-config gcc python3-dev && pip install 'agent-swarm[libvirt]'",
}


def default_provider_name(platform: str | None = None) -> str:
    if platform is None and os.environ.get(DEFAULT_ENV):
        return os.environ[DEFAULT_ENV]
    p = platform or sys.platform
    return {"darwin": "vz", "win32": "hyperv"}.get(p, "libvirt")


def _load(ref: str) -> object:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def names() -> list[str]:
    return [*PROVIDERS, *_test_providers()]


def _check_name(name: str) -> tuple[str, str]:
    extra = _test_providers()
    if name in extra:
        return extra[name], f"{extra[name]}.probe"
    try:
        return PROVIDERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown provider {name!r}", hint=f"choose one of: {', '.join(names())}"
        ) from None


def probe(name: str) -> ProbeResult:
    _, probe_ref = _check_name(name)
    module, _, attr = probe_ref.partition(":")
    if "." in attr:  # a test provider: Class.probe
        cls_name, _, meth = attr.partition(".")
        fn = getattr(_load(f"{module}:{cls_name}"), meth)
    else:
        fn = _load(probe_ref)
    result: ProbeResult = fn()  # type: ignore[operator,unused-ignore]
    return result


def probe_all() -> list[ProbeResult]:
    return [probe(n) for n in names()]


def capabilities(name: str) -> Capabilities | None:
    """A provider's declared capabilities (its class's), without connecting; None when its
    implementation cannot be imported here."""
    from agent_swarm.providers.base import Capabilities

    impl_ref, _ = _check_name(name)
    try:
        cls = _load(impl_ref)
    except ImportError:
        return None
    caps = getattr(cls, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else None


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
