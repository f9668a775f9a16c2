"""The core knows providers only through their contract (issue 9): no module outside
``providers/<name>/`` imports a concrete provider or names one in code."""

from __future__ import annotations

import ast
from pathlib import Path

import agent_swarm

PKG = Path(agent_swarm.__file__).parent
CONCRETE = ("libvirt", "vz", "hyperv")


def _core_modules() -> list[Path]:
    out = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).parts
        if rel[0] == "providers" and len(rel) > 2:
            continue  # providers/<name>/...: the providers themselves
        out.append(f)
    return out


def violations(source: str) -> list[str]:
    """Imports of a concrete provider's package, and identifiers naming one (strings and
    comments may mention them: the provider table and docs do)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if any(n.startswith(f"agent_swarm.providers.{c}") for c in CONCRETE) or n in CONCRETE:
                bad.append(f"imports {n}")
        ident = None
        if isinstance(node, ast.Name):
            ident = node.id
        elif isinstance(node, ast.Attribute):
            ident = node.attr
        if ident is not None and any(c in ident.lower() for c in ("libvirt", "hyperv")):
            bad.append(f"names {ident}")
        if isinstance(node, ast.Attribute) and node.attr in ("domain_name", "accel"):
            bad.append(f"uses the libvirt provider's .{node.attr}")
    return bad


def test_the_checker_catches_what_it_should() -> None:
    assert violations("from agent_swarm.providers.libvirt.provider import LibvirtProvider")
    assert violations("import agent_swarm.providers.vz.provider")
    assert violations("x = isinstance(p, LibvirtProvider)")
    assert violations("notice = provider.accel.notice")
    assert not violations("from agent_swarm.providers.base import Provider\n'libvirt'  # ok")


def test_no_core_module_knows_a_concrete_provider() -> None:
    found = {
        str(f.relative_to(PKG)): v
        for f in _core_modules()
        if (v := violations(f.read_text(encoding="utf-8")))
    }
    assert found == {}
