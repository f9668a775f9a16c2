"""PowerShell scripts read with tree-sitter's PowerShell grammar (test-only).

No PowerShell runs on Linux; what can be checked here is the text: that it parses (balanced
braces and parentheses, terminated strings), which commands it runs with which parameters,
what its ``param()`` block declares, which functions it defines. tests/unit/test_hyperv_scripts.py
checks the shipped Hyper-V scripts with it, and the fake PowerShell of tests/fakes/hyperv.py
binds arguments to a script's real ``param()`` block as PowerShell would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import tree_sitter
import tree_sitter_powershell


@cache
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


@dataclass(frozen=True)
class Param:
    """One parameter of a ``param()`` block."""

    name: str
    type: str  # "string", "int", "switch", "" (untyped)…
    mandatory: bool
    pattern: str | None = None  # [ValidatePattern(...)]
    range: tuple[int, int] | None = None  # [ValidateRange(a, b)]


@dataclass(frozen=True)
class Command:
    """A command invoked by name: ``Stop-VM -VM $vm -TurnOff``."""

    name: str
    parameters: tuple[str, ...]  # as written, without the dash or a trailing ':'
    line: int  # 1-based
    # (parameter, value) where the value is a literal word or single-quoted string
    # (``-CheckpointType Standard``, ``-Name 'vmms'``); not for variables or expressions.
    literals: tuple[tuple[str, str], ...] = ()


@dataclass
class Script:
    text: str
    errors: list[str] = field(default_factory=list)  # "line:col: what"
    params: dict[str, Param] = field(default_factory=dict)  # the script's own param() block
    has_param_block: bool = False
    functions: dict[str, dict[str, Param]] = field(default_factory=dict)
    commands: list[Command] = field(default_factory=list)
    # Invocations of something else than a name (``& $Body``, ``. (Join-Path …)``), as text.
    dynamic: list[str] = field(default_factory=list)


def _text(src: bytes, node: tree_sitter.Node) -> str:
    return src[node.start_byte : node.end_byte].decode("utf-8", errors="replace")


def _string_value(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1].replace("''", "'")
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1]
    return raw


def _param(src: bytes, node: tree_sitter.Node) -> Param:
    name = ""
    ptype = ""
    mandatory = False
    pattern: str | None = None
    vrange: tuple[int, int] | None = None
    for child in node.children:
        if child.type == "variable":
            name = _text(src, child).lstrip("$")
        if child.type != "attribute_list":
            continue
        for attr in child.children:
            if attr.type != "attribute":
                continue
            literal = next((c for c in attr.children if c.type == "type_literal"), None)
            if literal is not None:
                ptype = _text(src, literal).strip("[]").strip().lower()
                continue
            attr_name = next((c for c in attr.children if c.type == "attribute_name"), None)
            args = next((c for c in attr.children if c.type == "attribute_arguments"), None)
            aname = _text(src, attr_name).lower() if attr_name is not None else ""
            atext = _text(src, args) if args is not None else ""
            if aname == "parameter":
                mandatory = bool(
                    re.search(r"\bMandatory\b(?!\s*=\s*\$false)", atext, re.IGNORECASE)
                )
            elif aname == "validatepattern":
                pattern = _string_value(atext)
            elif aname == "validaterange":
                lo, hi = (int(x) for x in atext.split(","))
                vrange = (lo, hi)
    return Param(name, ptype, mandatory, pattern, vrange)


def _param_block(src: bytes, block: tree_sitter.Node) -> dict[str, Param]:
    out = {}
    for plist in block.children:
        if plist.type == "parameter_list":
            for p in plist.children:
                if p.type == "script_parameter":
                    param = _param(src, p)
                    out[param.name.lower()] = param
    return out


def _walk(node: tree_sitter.Node):  # type: ignore[no-untyped-def]
    yield node
    for child in node.children:
        yield from _walk(child)


def parse_text(text: str) -> Script:
    src = text.encode()
    tree = _parser().parse(src)
    script = Script(text)
    for node in _walk(tree.root_node):
        if node.is_error or node.is_missing:
            row, col = node.start_point
            what = (
                "missing " + node.type
                if node.is_missing
                else f"cannot parse {_text(src, node)[:40]!r}"
            )
            script.errors.append(f"{row + 1}:{col + 1}: {what}")
        elif (
            node.type == "param_block" and node.parent is not None and node.parent.type == "program"
        ):
            script.has_param_block = True
            script.params = _param_block(src, node)
        elif node.type == "function_statement":
            fname = next((c for c in node.children if c.type == "function_name"), None)
            body = next((c for c in node.children if c.type == "script_block"), None)
            block = None
            if body is not None:
                block = next((c for c in body.children if c.type == "param_block"), None)
            if fname is not None:
                params = _param_block(src, block) if block is not None else {}
                script.functions[_text(src, fname).lower()] = params
        elif node.type == "command":
            cname = next((c for c in node.children if c.type == "command_name"), None)
            if cname is None:
                script.dynamic.append(" ".join(_text(src, node).split()))
                continue
            elements = next((c for c in node.children if c.type == "command_elements"), None)
            params: list[str] = []
            literals: list[tuple[str, str]] = []
            if elements is not None:
                items = [c for c in elements.children if c.type != "command_argument_sep"]
                for i, el in enumerate(items):
                    if el.type != "command_parameter":
                        continue
                    pname = _text(src, el).lstrip("-").rstrip(":")
                    params.append(pname)
                    nxt = items[i + 1] if i + 1 < len(items) else None
                    if nxt is not None and nxt.type != "command_parameter":
                        raw = _text(src, nxt).strip()
                        if re.fullmatch(r"[A-Za-z0-9_.]+|'[^'$]*'", raw):
                            literals.append((pname, raw.strip("'")))
            script.commands.append(
                Command(_text(src, cname), tuple(params), node.start_point[0] + 1, tuple(literals))
            )
    if tree.root_node.has_error and not script.errors:
        script.errors.append("the parser reports an error")
    return script


def parse(path: Path) -> Script:
    return parse_text(path.read_text(encoding="utf-8"))


@cache
def script_params(path: Path) -> dict[str, Param]:
    """The ``param()`` block of a script file (cached: the fake PowerShell asks per call)."""
    return parse(path).params
