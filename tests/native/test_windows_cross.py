"""The native core's Windows paths, checked on Linux: the C++ core cross-compiled with
MinGW-w64 (ci/mingw-w64-x86_64.cmake) and its C++ tests (native/tests/core_tests.cpp) run
under Wine through CTest; the same test program is also built and run natively here.

What Wine runs: clone_win.cpp's copy fallback (CreateFileW on UTF-8 names, paths longer than
MAX_PATH through the `\\\\?\\` prefix, overwrite rules, errors), the qcow2 and VHDX writers and
image_info. What it cannot: block cloning (FSCTL_DUPLICATE_EXTENTS_TO_FILE answers
ERROR_NOT_SUPPORTED: only ReFS on a real Windows clones blocks), and sparse destinations (Wine's
volumes do not report FILE_SUPPORTS_SPARSE_FILES, so the copy is dense by design). Those two
tests say so in their skip reasons. Wine does not enforce MAX_PATH either, so the long-path
tests there prove the prefixed paths are well formed, not that an unprefixed one would fail.

Builds go to build/core-tests/{mingw,native} (or $AGENT_SWARM_CORE_TESTS_CACHE) and are reused;
the Wine prefix is made once in ~/.cache/agent-swarm/wineprefix (WINEDEBUG=-all). Needs cmake,
g++ and the Debian packages g++-mingw-w64-x86-64-posix, wine64 and wine: skipped without them
locally, failed where ci/lib.sh set the machine up (it installs them; AGENT_SWARM_STRICT_TOOLS).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from tests_support import strict_tools

REPO = Path(__file__).resolve().parents[2]
TOOLCHAIN = REPO / "ci" / "mingw-w64-x86_64.cmake"
TEST_SOURCE = REPO / "native" / "tests" / "core_tests.cpp"
CACHE = Path(os.environ.get("AGENT_SWARM_CORE_TESTS_CACHE") or REPO / "build" / "core-tests")
WINEPREFIX = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agent-swarm" / "wineprefix"
)
MINGW_CXX = "x86_64-w64-mingw32-g++-posix"
EXE = "agent_swarm_core_tests"
GROUPS = ("clone", "errors", "images", "paths", "block_clone")  # CMakeLists.txt's add_test
APT_HINT = "apt-get install g++-mingw-w64-x86-64-posix wine64 wine; bash ci/test.sh does"

if not (REPO / "CMakeLists.txt").exists() or not TEST_SOURCE.exists():
    pytest.skip(
        "the C++ sources are not here (wheel test runs copy tests/, not native/)",
        allow_module_level=True,
    )
if sys.platform != "linux" or platform.machine() != "x86_64":
    pytest.skip(
        "the MinGW-w64 cross build and the Wine run are checked on Linux x86_64 hosts",
        allow_module_level=True,
    )

import fcntl  # noqa: E402  (POSIX only: after the platform check)


def _missing(why: str, hint: str = APT_HINT) -> NoReturn:
    """A tool is missing: skip with the reason, or fail where ci/lib.sh set the machine up (it
    installs them)."""
    if strict_tools():
        pytest.fail(f"{why} (CI installs it: {hint})")
    pytest.skip(f"{why} ({hint})")


def _tool(*candidates: str) -> str | None:
    for c in candidates:
        found = shutil.which(c) if "/" not in c else (c if os.access(c, os.X_OK) else None)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def cmake() -> tuple[str, str]:
    """(cmake, ctest): from PATH, else the venv's bin (the test extra installs cmake)."""
    venv_bin = str(Path(sys.executable).parent)
    cm = _tool("cmake", f"{venv_bin}/cmake")
    if cm is None:
        _missing("cmake is not installed", "pip install cmake: the test extra has it")
    ct = _tool(str(Path(cm).parent / "ctest"), "ctest")
    if ct is None:
        _missing("ctest is not installed", "pip install cmake: the test extra has it")
    return cm, ct


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time for `path` (parallel pytest runs share the builds and prefix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(
    cmd: list[str],
    timeout: float = 600,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=timeout, cwd=cwd, env=env
    )


def _quiet(cmd: list[str], env: dict[str, str], timeout: float = 300) -> None:
    """Runs a Wine command with its stdio on /dev/null: processes it leaves behind (Wine's
    services) then hold no pipe of ours."""
    subprocess.run(
        cmd,
        env=env,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _build(cmake: str, build: Path, extra: list[str]) -> str:
    """Configure and build the core and its tests (no Python module) in `build`; returns the
    build's output (for the warning check)."""
    configure = [
        cmake,
        "-S",
        str(REPO),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        "-DAGENT_SWARM_BUILD_MODULE=OFF",
        "-DAGENT_SWARM_BUILD_TESTS=ON",
        *extra,
    ]
    proc = _run(configure, timeout=300)
    if proc.returncode != 0 and (build / "CMakeCache.txt").exists():
        shutil.rmtree(build)  # a cache from another checkout or toolchain: start over
        proc = _run(configure, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"configure failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    proc = _run([cmake, "--build", str(build), "-j", str(os.cpu_count() or 2)], timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def native_build(cmake: tuple[str, str]) -> tuple[Path, str]:
    if _tool("c++", "g++", "clang++") is None and "CXX" not in os.environ:
        _missing("no C++ compiler (g++)", "apt-get install g++")
    build = CACHE / "native"
    with _locked(build):
        return build, _build(cmake[0], build, [])


@pytest.fixture(scope="module")
def mingw_build(cmake: tuple[str, str]) -> tuple[Path, str]:
    if shutil.which(MINGW_CXX) is None:
        _missing(f"{MINGW_CXX} is not installed")
    build = CACHE / "mingw"
    with _locked(build):
        return build, _build(cmake[0], build, [f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}"])


@pytest.fixture(scope="module")
def wine_env() -> Iterator[dict[str, str]]:
    """The environment for Wine: our own prefix, made once (~10 s and ~700 MB: Wine copies its
    DLLs in) and shared by checkouts; no debug output, no Mono/Gecko install attempts.

    Wine's first process in a session starts system services (winedevice.exe) that inherit
    its stdout and outlive it until the wineserver exits (~3 s later): CTest, which reads
    that pipe, would wait for them on every run. So the session is started here, with its
    services on /dev/null, and a persistent wineserver that the last user stops."""
    wine = _tool("wine64", "/usr/lib/wine/wine64", "wine")
    if wine is None:
        _missing("Wine is not installed (wine64)")
    wineserver = _tool("wineserver", "/usr/lib/wine/wineserver64", "/usr/lib/wine/wineserver")
    if wineserver is None:
        _missing("wineserver is not installed (wine64)")
    prefix = WINEPREFIX
    env = {
        **os.environ,
        "WINEPREFIX": str(prefix),
        "WINEDEBUG": "-all",
        "WINEDLLOVERRIDES": "mscoree,mshtml=",
        "AGENT_SWARM_WINE": str(wine),
    }
    with _locked(prefix):
        if not (prefix / "system.reg").exists():
            _quiet([wine, "wineboot", "--init"], env)
            _quiet([wineserver, "-w"], env)
            if not (prefix / "system.reg").exists():
                pytest.fail(f"`wine64 wineboot --init` did not create the prefix {prefix}")
    # Users of the session hold a shared lock; the last one out stops the server.
    users = open(prefix.parent / f"{prefix.name}.users", "w")  # noqa: SIM115
    fcntl.flock(users, fcntl.LOCK_SH)
    try:
        _quiet([wineserver, "-p"], env)
        _quiet([wine, "wineboot"], env)
        yield env
    finally:
        fcntl.flock(users, fcntl.LOCK_UN)
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _quiet([wineserver, "-k"], env)
        except BlockingIOError:
            pass  # another test run is still using it
        users.close()


def _no_warnings(output: str) -> None:
    warnings = [line for line in output.splitlines() if "warning:" in line]
    assert not warnings, "the build is not warning-free:\n" + "\n".join(warnings)


def _ctest(ctest: str, build: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """Runs CTest in `build`: {test name: "passed" | "skipped"}; asserts none failed."""
    junit = build / "ctest-junit.xml"
    proc = _run(
        [ctest, "--output-on-failure", "--timeout", "300", "--output-junit", str(junit)],
        cwd=build,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, f"ctest failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
    results: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        skipped = case.find("skipped")
        results[case.get("name", "")] = (
            "skipped" if skipped is not None or case.get("status") == "notrun" else "passed"
        )
    return results


def _core_tests(cmd: list[str], env: dict[str, str] | None, *filters: str) -> tuple[int, str]:
    proc = _run([*cmd, *filters], env=env)
    return proc.returncode, proc.stdout + proc.stderr


def _wine_cmd(build: Path, env: dict[str, str]) -> list[str]:
    return [env["AGENT_SWARM_WINE"], str(build / f"{EXE}.exe")]


# ------------------------------------------------------------------ the MinGW-w64 build


def test_mingw_executable_is_pe32_plus_x86_64(mingw_build: tuple[Path, str]) -> None:
    """The test program is a 64-bit Windows console executable (PE32+, machine x86-64),
    statically linked (no MinGW runtime DLL imported)."""
    exe = mingw_build[0] / f"{EXE}.exe"
    data = exe.read_bytes()
    assert data[:2] == b"MZ"
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    assert data[pe : pe + 4] == b"PE\0\0"
    machine, _sections, _ts, _sym, _nsym, _opt_size, _chars = struct.unpack_from(
        "<HHIIIHH", data, pe + 4
    )
    assert machine == 0x8664, f"machine {machine:#x} is not IMAGE_FILE_MACHINE_AMD64"
    (magic,) = struct.unpack_from("<H", data, pe + 24)
    assert magic == 0x20B, f"optional header magic {magic:#x} is not PE32+"
    (subsystem,) = struct.unpack_from("<H", data, pe + 24 + 68)
    assert subsystem == 3, "not a console (IMAGE_SUBSYSTEM_WINDOWS_CUI) program"
    lowered = data.lower()
    for dll in (b"libstdc++-6.dll", b"libgcc_s_seh-1.dll", b"libwinpthread-1.dll"):
        assert dll not in lowered, f"imports {dll.decode()}: not linked statically"
    if shutil.which("file"):
        out = _run(["file", "-b", str(exe)]).stdout
        assert "PE32+ executable" in out and "x86-64" in out, out


def test_mingw_build_is_warning_free(mingw_build: tuple[Path, str]) -> None:
    """-Wall -Wextra for the core and the tests (what was compiled in this run)."""
    _no_warnings(mingw_build[1])


def test_ctest_under_wine(
    mingw_build: tuple[Path, str], wine_env: dict[str, str], cmake: tuple[str, str]
) -> None:
    """CTest runs every group through Wine (CMAKE_CROSSCOMPILING_EMULATOR); all pass but
    block_clone, which Wine cannot do (see the next test for its reason)."""
    results = _ctest(cmake[1], mingw_build[0], wine_env)
    assert set(results) == {f"core.{g}" for g in GROUPS}, results
    assert all(results[f"core.{g}"] == "passed" for g in GROUPS if g != "block_clone"), results


def test_core_tests_run_as_windows_code_under_wine(
    mingw_build: tuple[Path, str], wine_env: dict[str, str]
) -> None:
    """The program ran as Windows code (not some Linux build) and ran the Windows-only tests:
    UTF-16 file names, invalid UTF-8, `\\\\?\\` paths, io::win_path."""
    rc, out = _core_tests(_wine_cmd(mingw_build[0], wine_env), wine_env, "paths")
    assert rc == 0, out
    assert "platform: Windows (Wine)" in out, out
    for name in (
        "paths.clone_in_a_directory_longer_than_max_path",
        "paths.images_in_a_directory_longer_than_max_path",
        "paths.non_ascii_file_names",
        "paths.invalid_utf8_is_refused",
        "paths.verbatim_paths_are_taken_as_they_are",
        "paths.win_path_prefixes_long_paths",
    ):
        assert re.search(rf"^ok\s+{re.escape(name)}$", out, re.M), f"{name} did not pass:\n{out}"


@pytest.mark.parametrize(
    ("test_id", "expected_reason"),
    [
        ("block_clone.reflink_mode", "block clone: not supported by this filesystem/Wine"),
        ("clone.copy_keeps_holes", "does not report sparse-file support"),
    ],
)
def test_what_wine_cannot_do(
    mingw_build: tuple[Path, str], wine_env: dict[str, str], test_id: str, expected_reason: str
) -> None:
    """Block cloning (FSCTL_DUPLICATE_EXTENTS_TO_FILE: ReFS only, Wine answers
    ERROR_NOT_SUPPORTED) and sparse copies (Wine reports no FILE_SUPPORTS_SPARSE_FILES) do not
    run under Wine: the C++ test reports why, and this test skips with that reason. The
    fallback each one needs (a plain copy) is checked in the same C++ test before it skips."""
    rc, out = _core_tests(_wine_cmd(mingw_build[0], wine_env), wine_env, test_id)
    if rc == 0:
        return  # this Wine (or filesystem) can do it, and the test checked the result
    m = re.search(rf"^SKIP {re.escape(test_id)}: (.*)$", out, re.M)
    assert rc == 77 and m, f"expected a pass or a reported skip, got exit {rc}:\n{out}"
    assert expected_reason in m.group(1), out
    pytest.skip(f"under Wine: {m.group(1)}")


# ------------------------------------------------------------------ the same tests natively


def test_native_build_is_warning_free(native_build: tuple[Path, str]) -> None:
    _no_warnings(native_build[1])


def test_ctest_native(native_build: tuple[Path, str], cmake: tuple[str, str]) -> None:
    """The same program on Linux: every group passes; block_clone passes where the temp
    directory's filesystem can reflink, and is skipped (exit 77) where it cannot."""
    results = _ctest(cmake[1], native_build[0])
    assert set(results) == {f"core.{g}" for g in GROUPS}, results
    assert all(results[f"core.{g}"] == "passed" for g in GROUPS if g != "block_clone"), results
    rc, out = _core_tests([str(native_build[0] / EXE)], None)
    assert rc == 0, out
    assert "platform: POSIX" in out and re.search(r"^\d+ passed, 0 failed, \d+ skipped$", out, re.M)


def test_native_on_xfs_with_reflink(native_build: tuple[Path, str], xfs_dir: Path) -> None:
    """On a filesystem that shares extents (XFS, reflink=1) the block_clone test takes its
    other branch: Reflink and Auto modes both clone. Every other test passes there too."""
    rc, out = _core_tests([str(native_build[0] / EXE), "--dir", str(xfs_dir)], None)
    assert rc == 0, out
    assert re.search(r"^ok\s+block_clone\.reflink_mode$", out, re.M), out
    assert "(blocks shared: the filesystem clones)" in out
    assert re.search(r"^\d+ passed, 0 failed, 0 skipped$", out, re.M), out
