"""The shipped Hyper-V PowerShell scripts (and ci/windows.ps1), checked without PowerShell.

* Every script parses with tree-sitter's PowerShell grammar (balanced braces and parentheses,
  terminated strings).
* Every command is a cmdlet of Microsoft's published reference, called only with parameters
  (or aliases) that reference documents for it, or a function of our own called with its own
  parameters. The allow-list is tests/data/powershell-cmdlets.json (its sources, commits and
  paths are named inside; tests/support/powershell_cmdlets.py makes it).
* The scripts have the shape the runner relies on: ``[CmdletBinding()] param()``, strict mode,
  errors that stop, the framed answer of ``_common.ps1``, error categories the runner knows.
* What the provider passes matches each script's ``param()`` block: names, mandatory
  parameters, switches, integers (from the calls the fake PowerShell recorded while the
  provider did everything it does).
* Planted errors in copies show each check fails when it should.

None of this runs PowerShell: that happens on Windows only (ci/windows.ps1).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from agent_swarm.providers.hyperv import runner
from support.powershell import Script, parse, parse_text

REPO = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = runner.SCRIPTS_DIR
SCRIPTS = sorted(SCRIPTS_DIR.glob("*.ps1"))
COMMON = SCRIPTS_DIR / "_common.ps1"
OPERATIONS = [s for s in SCRIPTS if s != COMMON]
CI_SCRIPT = REPO / "ci" / "windows.ps1"
ALL = [*SCRIPTS, CI_SCRIPT]
ALLOW_LIST = json.loads((REPO / "tests" / "data" / "powershell-cmdlets.json").read_text())

# Invocations of something else than a command name, by script: running the body of
# Invoke-AgentSwarm, dot-sourcing _common.ps1, and (CI) running programs by path.
DYNAMIC_OK = {
    "_common.ps1": {"& $Body"},
    "windows.ps1": {"& $FilePath @ArgumentList", "& $VenvPython -c "},
}
DOT_SOURCE = ". (Join-Path -Path $PSScriptRoot -ChildPath '_common.ps1')"
FORBIDDEN = re.compile(
    r"Invoke-Expression|\biex\b|Add-Type|EncodedCommand|\[scriptblock\]::Create|Start-Process",
    re.IGNORECASE,
)


def _cmdlets() -> tuple[dict[str, set[str]], dict[tuple[str, str], set[str]]]:
    """({cmdlet: parameter names and aliases}, {(cmdlet, parameter): accepted values}),
    all lower case."""
    common = set()
    for name, aliases in ALLOW_LIST["common_parameters"]["parameters"].items():
        common |= {name.lower(), *(a.lower() for a in aliases)}
    names: dict[str, set[str]] = {}
    values: dict[tuple[str, str], set[str]] = {}
    for cmdlet, info in ALLOW_LIST["cmdlets"].items():
        names[cmdlet.lower()] = set(common)
        for name, p in info["parameters"].items():
            spelt = {name.lower(), *(a.lower() for a in p["aliases"])}
            names[cmdlet.lower()] |= spelt
            if p["values"]:
                for s in spelt:
                    values[(cmdlet.lower(), s)] = {v.lower() for v in p["values"]}
    return names, values


CMDLETS, VALUES = _cmdlets()


def _functions(script: Script) -> dict[str, set[str]]:
    """Functions this script may call: its own and (for the shipped scripts) _common.ps1's,
    each with its parameters and the common parameters (they are advanced functions)."""
    funcs = dict(script.functions)
    if script is not COMMON_PARSED:
        funcs = {**COMMON_PARSED.functions, **funcs}
    common = {n.lower() for n in ALLOW_LIST["common_parameters"]["parameters"]}
    return {name: set(params) | common for name, params in funcs.items()}


COMMON_PARSED = parse(COMMON)


def problems(script: Script, name: str) -> list[str]:
    """What is wrong in a parsed script: syntax errors, unknown commands, unknown
    parameters, dynamic invocations that are not expected."""
    out = [f"syntax {e}" for e in script.errors]
    funcs = _functions(script)
    for cmd in script.commands:
        key = cmd.name.lower()
        allowed = funcs.get(key) if key in funcs else CMDLETS.get(key)
        if allowed is None:
            out.append(f"line {cmd.line}: unknown command {cmd.name}")
            continue
        for param in cmd.parameters:
            if param.lower() not in allowed:
                out.append(f"line {cmd.line}: {cmd.name} has no parameter -{param}")
        for param, value in cmd.literals:
            accepted = VALUES.get((key, param.lower()))
            if accepted is not None and value.lower() not in accepted:
                out.append(f"line {cmd.line}: {cmd.name} -{param} does not accept {value!r}")
    ok = DYNAMIC_OK.get(name, set()) | ({DOT_SOURCE} if name != "windows.ps1" else set())
    for dyn in script.dynamic:
        if not any(dyn == o or (o.endswith(" ") and dyn.startswith(o)) for o in ok):
            out.append(f"unexpected dynamic invocation: {dyn}")
    return out


# ---- the shipped scripts ----


def test_one_script_per_operation() -> None:
    assert {s.name for s in OPERATIONS} == {
        "address.ps1", "checkpoint.ps1", "checkpoints.ps1", "define.ps1", "host-check.ps1",
        "list.ps1", "remove.ps1", "restore.ps1", "start.ps1", "status.ps1", "stop.ps1",
    }  # fmt: skip


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_parses_and_uses_only_documented_cmdlets_and_parameters(path: Path) -> None:
    script = parse(path)
    assert script.commands, "nothing parsed"
    assert problems(script, path.name) == []


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_text_is_ascii_and_nothing_evaluates_strings(path: Path) -> None:
    raw = path.read_bytes()
    # Windows PowerShell 5.1 reads a file without a BOM in the ANSI code page: ASCII only.
    assert raw.isascii(), [i for i, b in enumerate(raw) if b > 127][:5]
    assert not raw.startswith(b"\xef\xbb\xbf")
    assert FORBIDDEN.search(raw.decode()) is None


@pytest.mark.parametrize("path", OPERATIONS, ids=[p.name for p in OPERATIONS])
def test_script_shape(path: Path) -> None:
    text = path.read_text()
    script = parse(path)
    assert script.has_param_block
    lines = [ln.strip() for ln in text.splitlines()]
    order = [
        lines.index("[CmdletBinding()]"),
        lines.index("param("),
        lines.index("Set-StrictMode -Version Latest"),
        lines.index("$ErrorActionPreference = 'Stop'"),
        lines.index(DOT_SOURCE),
        lines.index("Invoke-AgentSwarm {"),
    ]
    assert order == sorted(order), order
    assert [c.name for c in script.commands].count("Invoke-AgentSwarm") == 1
    assert text.startswith("<#\n.SYNOPSIS\n"), "a comment-based help block first"
    # Every parameter is typed; names are what the runner accepts.
    for p in script.params.values():
        assert p.type in ("string", "int", "switch"), p
        assert runner.PARAM_RE.fullmatch(p.name), p


def test_common_frames_and_categories_match_the_runner() -> None:
    text = COMMON.read_text()
    assert f"`n{runner.FRAME_START}`n" in text and f"`n{runner.FRAME_END}`n" in text
    assert "ConvertTo-Json -InputObject $Answer -Depth 8 -Compress" in text
    used = set()
    for path in SCRIPTS:
        used |= set(re.findall(r"-Category '([a-z-]+)'", path.read_text()))
    used |= set(re.findall(r"\$category = '([a-z-]+)'", text))
    known = set(runner.UNAVAILABLE_HINTS) | {
        "not-found", "checkpoint-not-found", "exists", "invalid-state", "ambiguous",
        "access-denied", "other",
    }  # fmt: skip
    assert used <= known, used - known
    assert {"not-elevated", "module-missing", "not-found", "other"} <= used


def test_the_allow_list_names_its_sources_and_is_exactly_what_is_used() -> None:
    sources = {s["repository"]: s for s in ALLOW_LIST["sources"]}
    assert set(sources) == {
        "MicrosoftDocs/windows-powershell-docs",
        "MicrosoftDocs/PowerShell-Docs",
    }
    for s in sources.values():
        assert re.fullmatch(r"[0-9a-f]{40}", s["commit"]) and s["docsets"]
    for name, info in ALLOW_LIST["cmdlets"].items():
        assert info["source"] in sources
        assert len(info["paths"]) == len(sources[info["source"]]["docsets"])
        assert all(p.endswith(f"/{name}.md") for p in info["paths"]), name
    used = set()
    for path in ALL:
        s = parse(path)
        own = {n.lower() for n in _functions(s)}
        used |= {c.name for c in s.commands if c.name.lower() not in own}
    assert used == set(ALLOW_LIST["cmdlets"]), (
        used ^ set(ALLOW_LIST["cmdlets"]),
        "regenerate tests/data/powershell-cmdlets.json with tests/support/powershell_cmdlets.py",
    )


# ---- planted errors: the checks can fail ----

MISSING_QUOTE = '-Message "$file does not exist"\n'
PLANTED = {
    # id: (script, old, new, what the check must report)
    "unbalanced-brace": (
        "stop.ps1",
        "            $forced = $false\n        }\n",
        "            $forced = $false\n",
        "syntax",
    ),
    "unterminated-string": (
        "define.ps1",
        MISSING_QUOTE,
        MISSING_QUOTE.replace('"\n', "\n"),
        "syntax",
    ),
    "misspelt-cmdlet": (
        "stop.ps1",
        "Stop-VM -VM $vm -TurnOff -Force",
        "Stop-VMM -VM $vm -TurnOff -Force",
        "unknown command Stop-VMM",
    ),
    "unknown-parameter": (
        "remove.ps1",
        "Remove-VM -VM $vm -Force",
        "Remove-VM -VM $vm -Force -DeleteDisks",
        "Remove-VM has no parameter -DeleteDisks",
    ),
    "own-function-parameter": (
        "status.ps1",
        "Get-AgentSwarmVM -Name $Name -AllowMissing",
        "Get-AgentSwarmVM -Nmae $Name -AllowMissing",
        "Get-AgentSwarmVM has no parameter -Nmae",
    ),
    "value-not-accepted": (
        "define.ps1",
        "-CheckpointType Standard",
        "-CheckpointType Standrd",
        "Set-VM -CheckpointType does not accept 'Standrd'",
    ),
    "dynamic-code": (
        "start.ps1",
        "Start-VM -VM $vm",
        "& ([scriptblock]::Create($Disk))",
        "unexpected dynamic invocation",
    ),
}


@pytest.mark.parametrize(("name", "old", "new", "expect"), PLANTED.values(), ids=PLANTED.keys())
def test_a_planted_error_is_caught(
    tmp_path: Path, name: str, old: str, new: str, expect: str
) -> None:
    text = (SCRIPTS_DIR / name).read_text()
    assert text.count(old) >= 1, f"{old!r} is not in {name}"
    copy = tmp_path / name
    copy.write_text(text.replace(old, new, 1))
    found = problems(parse(copy), name)
    assert any(expect in p for p in found), found
    assert problems(parse_text(text), name) == []  # the original is clean


# ---- the provider's calls match the scripts' param() blocks ----


@pytest.fixture(scope="module")
def recorded_calls(
    tmp_path_factory: pytest.TempPathFactory,
) -> list[tuple[str, dict[str, str | bool]]]:
    """Every script call the provider makes, recorded by the fake PowerShell while the
    provider does everything it does (info, define, start, stop, checkpoints, address,
    list, owner, delete)."""
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed (it writes the VM disks' VHDX base)")
    from agent_swarm import native
    from agent_swarm.providers.hyperv.provider import HyperVProvider
    from agent_swarm.providers.hyperv.runner import PowerShell
    from fakes.hyperv import FakeHyperV
    from providers.contract import SpecFactory

    tmp = tmp_path_factory.mktemp("hv-calls")
    mp = pytest.MonkeyPatch()
    mp.setenv("AGENT_SWARM_HOME", str(tmp / "home"))
    try:
        host = FakeHyperV()
        p = HyperVProvider(runner=PowerShell("powershell.exe", execute=host.execute))
        base = tmp / "base.vhdx"
        subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", str(base), "64M"], check=True)
        spec = SpecFactory(tmp / "vms")("task", "t1", "vhdx", "nat")
        spec.disk.unlink()
        native.create_vhdx_differencing(spec.disk, base)
        p.info()
        p.check_host()
        p.define(spec)
        p.start(spec)
        p.ssh_endpoint(spec)
        p.status(spec)
        p.list_ours()
        p.owner_of("task", "t1")
        p.runtime_problem(spec)
        p.checkpoint(spec, "c1")
        p.list_checkpoints(spec)
        host.vm(p.vm_name("task", "t1")).state = "Paused"
        p.checkpoint(spec, "c2")
        p.restore(spec, "c2")
        p.restore(spec, "c1")
        p.stop(spec, timeout=5)
        p.start(spec)
        p.stop(spec, force=True)
        p.delete(spec)
    finally:
        mp.undo()
    return host.calls


def test_every_script_is_called_and_every_call_binds(
    recorded_calls: list[tuple[str, dict[str, str | bool]]],
) -> None:
    called = {s for s, _ in recorded_calls}
    assert called == {s.name for s in OPERATIONS}
    passed: dict[str, set[str]] = {}
    for script, params in recorded_calls:
        declared = parse(SCRIPTS_DIR / script).params
        for name, value in params.items():
            p = declared.get(name.lower())
            assert p is not None, f"{script}: no parameter -{name}"
            assert p.name == name, f"{script}: -{name} is spelt -{p.name} there"
            if p.type == "switch":
                assert value is True, f"{script}: switch -{name} given a value"
            else:
                assert isinstance(value, str) and value, f"{script}: -{name} has no value"
            if p.type == "int":
                assert re.fullmatch(r"\d+", str(value)), f"{script}: -{name} {value!r}"
                if p.range:
                    assert p.range[0] <= int(value) <= p.range[1], (script, name, value)
            if p.pattern:
                assert re.search(p.pattern, str(value), re.IGNORECASE), (script, name, value)
        missing = {p.name for p in declared.values() if p.mandatory} - set(params)
        assert not missing, f"{script}: mandatory parameters not passed: {missing}"
        passed.setdefault(script, set()).update(params)
    for script in called:  # no parameter the provider never passes
        declared = {p.name for p in parse(SCRIPTS_DIR / script).params.values()}
        assert declared == passed[script], (script, declared - passed[script])


# ---- shipped in the package ----


def test_scripts_are_package_data() -> None:
    """scikit-build-core's ``wheel.packages = ["python/agent_swarm"]`` copies every file of the
    package directory that git does not ignore into the wheel (and the sdist takes every
    file git does not ignore): the scripts ship as long as nothing excludes them."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["scikit-build"]
    assert "python/agent_swarm" in cfg["wheel"]["packages"]
    for key in ("exclude", "exclude-files"):
        for pattern in cfg.get("wheel", {}).get(key, []) + cfg.get("sdist", {}).get(key, []):
            assert not Path("x/scripts/define.ps1").match(pattern), pattern
            assert ".ps1" not in pattern, pattern
    source = sorted((REPO / "python/agent_swarm/providers/hyperv/scripts").glob("*.ps1"))
    # The package under test (installed, in CI) carries every script of the checkout.
    assert [p.name for p in SCRIPTS] == [p.name for p in source]
    if shutil.which("git") and (REPO / ".git").exists():
        r = subprocess.run(
            ["git", "-C", str(REPO), "check-ignore", *map(str, source)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 1, f"git ignores: {r.stdout}"


# ---- the Windows CI job ----


def test_windows_workflow_runs_the_script() -> None:
    wf = (REPO / ".github" / "workflows" / "windows.yml").read_text()
    assert re.search(r"\bwindows-(2022|2025|latest)\b", wf)  # a GitHub-hosted Windows image
    assert "shell: pwsh" in wf
    for script in re.findall(r"\b(ci/[\w.-]+\.ps1)\b", wf):
        assert (REPO / script).is_file(), script
    text = CI_SCRIPT.read_text()
    assert "skipped: Hyper-V not usable on this runner" in text
    assert "AGENT_SWARM_HYPERV_REAL" in text and "AGENT_SWARM_HYPERV_IMAGE" in text
    # it runs the test files that exist
    for test in re.findall(r"'(tests/[\w/.-]+\.py)'", text):
        assert (REPO / test).is_file(), test
