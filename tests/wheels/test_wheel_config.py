"""The wheel configuration, checked where no wheel for macOS or Windows can be built: pyproject.toml
against the schemas of validate-pyproject and its cibuildwheel and scikit-build-core plug-ins
(offline), the build identifiers cibuildwheel would build on each platform, that the paths its
test step uses exist, and ci/macos-repair-wheel.sh's flow with fake macOS tools (delocate,
codesign, lipo): the helper is signed with its entitlement after delocate, inside the final wheel,
and RECORD stays valid. The workflow itself is checked by tests/unit/test_ci_files.py."""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests_support import strict_tools

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
CONFIG = tomllib.loads(PYPROJECT.read_text())
CIBW = CONFIG["tool"]["cibuildwheel"]
PYTHONS = ("cp311", "cp312", "cp313")


def need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        msg = f"{module} is not installed (it is in the test extra: pip install .[test])"
        if strict_tools():
            pytest.fail(msg)
        pytest.skip(msg)


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    need("validate_pyproject")
    return subprocess.run(
        [sys.executable, "-m", "validate_pyproject", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_plugins_are_there() -> None:
    need("validate_pyproject")
    need("cibuildwheel")
    need("scikit_build_core")
    from validate_pyproject import plugins

    names = {p.tool for p in plugins.list_from_entry_points()}
    assert {"cibuildwheel", "scikit-build"} <= names, names


def test_pyproject_validates() -> None:
    test_plugins_are_there()
    proc = validate(PYPROJECT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("[tool.cibuildwheel]\n", "[tool.cibuildwheel]\nbogus-key = 1\n", "bogus-key"),
        ('archs = ["AMD64"]', "archs = 64", "tool.cibuildwheel.windows.archs"),
        ("[tool.cibuildwheel.macos]\n", "[tool.cibuildwheel.macos]\nrepair-command = 'x'\n",
         "repair-command"),
        ('cmake.build-type = "Release"', 'cmake.build-type = "Release"\nsdist.bogus = 1',
         "tool.scikit-build.sdist"),
    ],
    ids=["cibw-unknown-key", "cibw-bad-type", "cibw-misspelt-key", "skbuild-unknown-key"],
)  # fmt: skip
def test_validation_catches_a_planted_error(
    tmp_path: Path, old: str, new: str, expect: str
) -> None:
    test_plugins_are_there()
    text = PYPROJECT.read_text()
    assert text.count(old) == 1, f"{old!r} is not in pyproject.toml once"
    bad = tmp_path / "pyproject.toml"
    bad.write_text(text.replace(old, new))
    proc = validate(bad)
    assert proc.returncode != 0, proc.stdout
    assert expect in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def build_identifiers(platform: str) -> list[str]:
    need("cibuildwheel")
    proc = subprocess.run(
        [sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", platform],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("CIBW_")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize(
    ("platform", "platforms"),
    [
        ("linux", [f"{libc}_{arch}" for libc in ("manylinux", "musllinux")
                   for arch in ("x86_64", "aarch64")]),
        ("macos", ["macosx_arm64", "macosx_x86_64"]),
        ("windows", ["win_amd64"]),
    ],
)  # fmt: skip
def test_build_identifiers(platform: str, platforms: list[str]) -> None:
    assert sorted(build_identifiers(platform)) == sorted(
        f"{py}-{p}" for py in PYTHONS for p in platforms
    )


def test_requires_python_matches_the_builds() -> None:
    assert CONFIG["project"]["requires-python"] == ">=3.11"
    assert CIBW["build"].split() == [f"{py}-*" for py in PYTHONS]


def test_test_step_paths_exist() -> None:
    """cibuildwheel stops on a missing test source; pytest on a missing test path."""
    for src in CIBW["test-sources"]:
        assert (REPO / src).exists(), src
    commands = [CIBW["test-command"]] + [
        CIBW[p]["test-command"] for p in ("linux", "macos", "windows") if "test-command" in CIBW[p]
    ]
    for command in commands:
        assert '"' in command and "'" not in command, "cmd.exe on Windows: double quotes only"
        args = shlex.split(command)
        assert args[0] == "pytest"
        for arg in args[1:]:
            if arg.startswith("tests/"):
                assert (REPO / arg).exists(), arg
                assert any(arg.startswith(s) for s in CIBW["test-sources"]), arg
        assert "tests/wheels/test_installed.py" in args


def test_macos_helper_is_installed_where_the_repair_step_signs_it() -> None:
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"asvz_install_helper\(agent_swarm/bin\)", cmake)
    script = (REPO / "ci" / "macos-repair-wheel.sh").read_text()
    assert 'HELPER_IN_WHEEL="agent_swarm/bin/agent-swarm-vz"' in script
    assert CIBW["macos"]["repair-wheel-command"] == (
        "bash ci/macos-repair-wheel.sh {wheel} {dest_dir} {delocate_archs}"
    )
    assert CIBW["macos"]["environment"]["MACOSX_DEPLOYMENT_TARGET"] == "13.0"


# ---- ci/macos-repair-wheel.sh with fake macOS tools ---------------------------------------

HELPER = "agent_swarm/bin/agent-swarm-vz"
ENTITLEMENT = "com.apple.security.virtualization"


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


TAG = "cp312-cp312-macosx_13_0_arm64"


def make_wheel(path: Path) -> None:
    files = {
        "agent_swarm/__init__.py": b"",
        HELPER: b"MACHO helper\n",
        "agent_swarm-0.1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: agent-swarm\n",
        "agent_swarm-0.1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nTag: " + TAG.encode() + b"\n",
    }
    record = "".join(f"{n},{record_hash(d)},{len(d)}\n" for n, d in files.items())
    record += "agent_swarm-0.1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name == HELPER else 0o644) << 16
            z.writestr(info, data)
        z.writestr("agent_swarm-0.1.0.dist-info/RECORD", record)


def check_record(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        record = z.read("agent_swarm-0.1.0.dist-info/RECORD").decode()
        for name, digest, size in csv.reader(io.StringIO(record)):
            if digest:
                data = z.read(name)
                assert (digest, int(size)) == (record_hash(data), len(data)), name


# The fakes log their calls; codesign keeps a "signature" line at the end of the file: what
# `codesign -d --entitlements -` prints back. delocate rewrites the helper and signs it ad hoc
# without entitlements, as the real one does when it changes a Mach-O.
FAKES = {
    "uname": """
        import os, sys
        if sys.argv[1:] == ["-s"]:
            print("Darwin")
        else:
            os.execv("/bin/uname", ["uname", *sys.argv[1:]])
    """,
    "delocate-wheel": """
        import base64, hashlib, os, sys, zipfile
        args = sys.argv[1:]
        out, wheel = args[args.index("-w") + 1], args[-1]
        log("delocate-wheel", *args)
        os.makedirs(out)
        member = "agent_swarm/bin/agent-swarm-vz"
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(
            os.path.join(out, os.path.basename(wheel)), "w"
        ) as dst:
            for item in src.infolist():
                data = src.read(item)
                if item.filename == member:
                    data = data.split(b"SIG:")[0] + b"SIG:adhoc\\n"
                dst.writestr(item, data)
    """,
    "codesign": """
        import sys
        args = sys.argv[1:]
        log("codesign", *args)
        path = args[-1]
        data = open(path, "rb").read()
        body, _, sig = data.partition(b"SIG:")
        if args[0] == "-s":
            ents = args[args.index("--entitlements") + 1]
            keys = open(ents).read() if MODE != "ignore-entitlements" else ""
            open(path, "wb").write(body + b"SIG:" + keys.encode() + b"\\n")
        elif args[0] == "--verify":
            sys.exit(0 if sig else 1)
        elif args[0] == "-d":
            print("Executable=" + path, file=sys.stderr)
            print(sig.decode().removeprefix("adhoc"))
    """,
    "lipo": """
        print("arm64")
    """,
}


def run_repair(tmp_path: Path, mode: str = "") -> tuple[subprocess.CompletedProcess[str], Path]:
    fakes, calls = tmp_path / "fakes", tmp_path / "calls.log"
    fakes.mkdir()
    prelude = (
        f"#!{sys.executable}\nMODE = {mode!r}\n"
        f"def log(*a):\n    open({str(calls)!r}, 'a').write(' '.join(a) + '\\n')\n"
    )
    for name, body in FAKES.items():
        f = fakes / name
        f.write_text(prelude + textwrap.dedent(body))
        f.chmod(0o755)
    pybin = tmp_path / "pybin"  # `python` for the script: this interpreter
    pybin.mkdir()
    (pybin / "python").symlink_to(sys.executable)
    wheel = tmp_path / "in" / "agent_swarm-0.1.0-cp312-cp312-macosx_13_0_arm64.whl"
    wheel.parent.mkdir()
    make_wheel(wheel)
    dest = tmp_path / "repaired"
    proc = subprocess.run(
        ["bash", str(REPO / "ci" / "macos-repair-wheel.sh"), str(wheel), str(dest), "arm64"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PATH": f"{fakes}:{pybin}:/usr/bin:/bin"},
    )
    return proc, dest / wheel.name


@pytest.mark.skipif(shutil.which("bash") is None or sys.platform == "win32", reason="bash")
def test_macos_repair_signs_after_delocate(tmp_path: Path) -> None:
    proc, final = run_repair(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    order = [c.split()[0] + (" " + c.split()[1] if c.startswith("codesign") else "") for c in calls]
    assert order[0] == "delocate-wheel", calls
    assert order.index("codesign -s") > order.index("delocate-wheel"), calls
    assert "codesign --verify" in order and "codesign -d" in order, calls
    assert "--require-archs arm64" in calls[0]
    with zipfile.ZipFile(final) as z:
        helper = z.read(HELPER)
        assert (z.getinfo(HELPER).external_attr >> 16) & 0o111
    # the signature in the final wheel carries the entitlement (not delocate's ad-hoc one)
    assert helper.startswith(b"MACHO helper\n") and ENTITLEMENT.encode() in helper
    assert b"adhoc" not in helper
    check_record(final)


@pytest.mark.skipif(shutil.which("bash") is None or sys.platform == "win32", reason="bash")
def test_macos_repair_fails_without_the_entitlement(tmp_path: Path) -> None:
    proc, _ = run_repair(tmp_path, mode="ignore-entitlements")
    assert proc.returncode != 0
    assert f"is not signed with {ENTITLEMENT}" in proc.stderr, proc.stderr
