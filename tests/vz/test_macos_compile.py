"""Compile checks of the macOS VZ backend (native/vz/src/darwin/vz_backend.mm) on Linux.

Nothing here can run Virtualization.framework. What it can do: compile the Objective-C++ for
macOS 13 on arm64 and x86_64 with zig's clang against declarations generated from pyobjc's
scan of the SDK (tests/support/fwinfo_header.py), which catches misspelled selectors, unknown
properties and APIs newer than macOS 13 used without ``@available``; then read the Mach-O
object with LIEF and check that every selector it sends and every class it references is in
the scan. The plant-an-error tests show each check fails on a broken copy of the file.

Needs the ``macos-check`` extra (ziglang, lief) and PyPI (pyobjc's sdists, cached under
``~/.cache/agent-swarm/fwinfo``). Without them: skipped, or failed where ci/lib.sh set the
machine up (AGENT_SWARM_STRICT_TOOLS). On macOS the real SDK build (ci/macos.sh) is the check,
so this module skips there.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import fwinfo_header as fw
from tests_support import strict_tools

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "native" / "vz" / "src" / "darwin" / "vz_backend.mm"
INCLUDE = REPO / "native" / "vz" / "include"

TARGETS = {"arm64": "aarch64-macos.13.0", "x86_64": "x86_64-macos.13.0"}
DEPLOYMENT_TARGET = (13, 0)
ZIG_VERSION = "0.17.1"  # the macos-check extra's pin; LIBCXX_DEFINES below are its own

# The warnings native/vz/CMakeLists.txt builds with, plus the two that make the SDK
# declarations strict: a selector no @interface declares, and a macOS 14+ API outside
# `if (@available(macOS 14, *))`.
WARNINGS = (
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Werror=objc-method-access",
    "-Werror=unguarded-availability-new",
    "-Wno-unused-command-line-argument",
)

# `zig c++` builds libc++, libc++abi and compiler_rt for the target before any compile (~80 s
# per target, even for -c); a compile that is never linked does not need them. -nostdlib
# skips that, and the libc++ headers and configuration macros that `zig c++ -###` shows for
# these targets (zig 0.17.1) are given here instead. -I puts libc++ ahead of the Darwin libc
# headers that zig adds as -isystem (libc++'s <errno.h> etc. must come first).
LIBCXX_DEFINES = (
    "_LIBCPP_ABI_VERSION=1",
    "_LIBCPP_ABI_NAMESPACE=__1",
    "_LIBCPP_HAS_THREADS=1",
    "_LIBCPP_HAS_MONOTONIC_CLOCK",
    "_LIBCPP_HAS_TERMINAL",
    "_LIBCPP_HAS_MUSL_LIBC=0",
    "_LIBCXXABI_DISABLE_VISIBILITY_ANNOTATIONS",
    "_LIBCPP_DISABLE_VISIBILITY_ANNOTATIONS",
    "_LIBCPP_HAS_VENDOR_AVAILABILITY_ANNOTATIONS=0",
    "_LIBCPP_HAS_FILESYSTEM=1",
    "_LIBCPP_HAS_RANDOM_DEVICE",
    "_LIBCPP_HAS_LOCALIZATION",
    "_LIBCPP_HAS_UNICODE",
    "_LIBCPP_HAS_WIDE_CHARACTERS",
    "_LIBCPP_HAS_NO_STD_MODULES",
    "_LIBCPP_PSTL_BACKEND_SERIAL",
    "_LIBCPP_HARDENING_MODE=_LIBCPP_HARDENING_MODE_NONE",
    "_LIBCPP_ASSERTION_SEMANTIC_DEFAULT=_LIBCPP_ASSERTION_SEMANTIC_IGNORE",
)

# Selectors newer than macOS 13 that the backend sends. Each call sits inside
# `if (@available(macOS 14, *))` (-Werror=unguarded-availability-new enforces it, see
# test_planted_unguarded_call_fails); VZ declares them for Apple silicon only.
GUARDED_SELECTORS = {
    "arm64": {
        "saveMachineStateToURL:completionHandler:",
        "restoreMachineStateFromURL:completionHandler:",
        "validateSaveRestoreSupportWithError:",
    },
    "x86_64": set(),
}

# Names in __objc_methname that neither SDK scan nor the runtime's NSObject.h declares.
EXTRA_SELECTORS = {
    # clang's generated constructor/destructor of an Objective-C class with C++ ivars
    # (ASVZDelegate holds a std::shared_ptr): -fobjc-call-cxx-cdtors, on by default on Darwin.
    ".cxx_construct",
    ".cxx_destruct",
}

# Our own Objective-C class: defined in the object, not in the SDK.
OWN_CLASSES = {"ASVZDelegate"}


# ---------------------------------------------------------------------------------------------
# Toolchain, scans, headers


def _missing(what: str) -> None:
    if strict_tools():
        pytest.fail(
            f"{what} (ci/lib.sh installs the macos-check extra: pip install '.[macos-check]')"
        )
    pytest.skip(what)


@pytest.fixture(scope="module")
def zig_dir() -> Path:
    if sys.platform == "darwin":
        pytest.skip("on macOS the real SDK build of agent-swarm-vz checks the .mm (ci/macos.sh)")
    for module in ("ziglang", "lief"):
        if importlib.util.find_spec(module) is None:
            _missing(f"the Python package {module} is not installed")
    spec = importlib.util.find_spec("ziglang")
    assert spec is not None and spec.origin is not None
    proc = subprocess.run(
        [sys.executable, "-m", "ziglang", "version"], capture_output=True, text=True, check=False
    )
    if proc.stdout.strip() != ZIG_VERSION:
        pytest.fail(
            f"ziglang {proc.stdout.strip() or proc.stderr.strip()!r} is installed; this module "
            f"passes zig {ZIG_VERSION}'s libc++ configuration (LIBCXX_DEFINES): update both"
        )
    return Path(spec.origin).parent


@dataclass
class Sdk:
    """One architecture's generated headers and the scan index to check objects against."""

    arch: str
    include: Path
    index: fw.ScanIndex
    report: fw.Report


@pytest.fixture(scope="module")
def sdks(zig_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sdk]:
    out = {}
    for arch in TARGETS:
        try:
            foundation, virtualization = fw.scans_for(arch)
        except fw.FwinfoUnavailable as e:
            _missing(f"pyobjc's SDK scan is not available: {e}")
        include = tmp_path_factory.mktemp(f"sdk-{arch}")
        report = fw.generate(include, foundation, virtualization)
        out[arch] = Sdk(arch, include, fw.index([foundation, virtualization]), report)
    return out


def zig_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agent-swarm" / "zig"


def compile_mm(
    zig_dir: Path, sdk: Sdk, source: Path, obj: Path
) -> subprocess.CompletedProcess[str]:
    """Compiles `source` for macOS 13 into the Mach-O object `obj`.

    Not -fsyntax-only: with it `zig c++` always fails after clang succeeds ("failed to rename
    ... FileNotFound": it expects an object; ziglang/zig#17361). The front end's checks are
    the same; codegen adds a second or so."""
    cmd = [
        sys.executable, "-m", "ziglang", "c++",
        "-target", TARGETS[sdk.arch],
        "-std=c++17", "-x", "objective-c++", "-fobjc-arc",
        *WARNINGS,
        "-nostdlib",
        "-I", str(zig_dir / "lib" / "libcxx" / "include"),
        "-I", str(zig_dir / "lib" / "libcxxabi" / "include"),
        *(f"-D{d}" for d in LIBCXX_DEFINES),
        "-isystem", str(sdk.include),  # as the SDK's frameworks are system headers on a Mac
        "-I", str(INCLUDE),
        "-c", "-o", str(obj), str(source),
    ]  # fmt: skip
    cache = zig_cache()
    cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(cache)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=env)


@dataclass
class Compiled:
    sdk: Sdk
    proc: subprocess.CompletedProcess[str]
    obj: Path


@pytest.fixture(scope="module", params=sorted(TARGETS))
def compiled(
    request: pytest.FixtureRequest,
    zig_dir: Path,
    sdks: dict[str, Sdk],
    tmp_path_factory: pytest.TempPathFactory,
) -> Compiled:
    sdk = sdks[request.param]
    obj = tmp_path_factory.mktemp(f"obj-{sdk.arch}") / "vz_backend.o"
    return Compiled(sdk, compile_mm(zig_dir, sdk, SOURCE, obj), obj)


# ---------------------------------------------------------------------------------------------
# Reading the object


@dataclass
class ObjectInfo:
    selectors: set[str]
    undefined_classes: set[str]
    defined_classes: set[str]
    undefined_data: set[str]  # other undefined symbols of SDK frameworks (externs)


_SELECTOR = re.compile(r"[A-Za-z_.][A-Za-z0-9_]*(:[A-Za-z0-9_]*)*:?")
_CLASS_SYMBOL = re.compile(r"_OBJC_(?:META)?CLASS_\$_(\w+)")


def read_object(path: Path) -> ObjectInfo:
    import lief

    lief.logging.disable()
    binary = lief.parse(str(path))
    assert isinstance(binary, lief.MachO.Binary), f"{path} is not a Mach-O file"
    section = next(s for s in binary.sections if s.name == "__objc_methname")
    strings = {s.decode() for s in bytes(section.content).split(b"\0") if s}
    ivars: set[str] = set()
    undefined_classes: set[str] = set()
    defined_classes: set[str] = set()
    undefined_data: set[str] = set()
    for sym in binary.symbols:
        name = sym.name if isinstance(sym.name, str) else sym.name.decode()
        if name.startswith("_OBJC_IVAR_$_"):
            ivars.add(name.rsplit(".", 1)[-1])  # _OBJC_IVAR_$_Class.ivar
            continue
        m = _CLASS_SYMBOL.fullmatch(name)
        undefined = sym.type == lief.MachO.Symbol.TYPE.UNDEFINED
        if m:
            (undefined_classes if undefined else defined_classes).add(m.group(1))
        elif undefined and re.match(r"_(VZ|NS)[A-Z]", name):
            undefined_data.add(name[1:])
    # __objc_methname also holds ivar names and property attribute strings ("T@\"NSString\",R,C").
    selectors = {s for s in strings if _SELECTOR.fullmatch(s) and s not in ivars}
    return ObjectInfo(selectors, undefined_classes, defined_classes, undefined_data)


def runtime_selectors(zig_dir: Path) -> set[str]:
    """Selectors of the Objective-C runtime's NSObject class and protocol, read from the
    objc/NSObject.h that zig ships (the Foundation scan does not list the root class). The
    object lists the NSObject protocol's methods because VZVirtualMachineDelegate adopts it."""
    header = zig_dir / "lib" / "libc" / "include" / "any-darwin-any" / "objc" / "NSObject.h"
    out = set()
    for line in header.read_text().splitlines():
        line = line.strip()
        if line.startswith(("-", "+")):
            rest = re.sub(r"^[-+]\s*\([^)]*\)\s*", "", line)  # drop the return type
            parts = re.findall(r"(\w+)\s*:", rest)
            out.add("".join(p + ":" for p in parts) if parts else re.match(r"\w+", rest).group(0))  # type: ignore[union-attr]
        elif line.startswith("@property"):
            m = re.search(r"(\w+)\s*;", line)
            if m:
                out.add(m.group(1))
    return out


def unknown_selectors(info: ObjectInfo, sdk: Sdk, zig_dir: Path) -> set[str]:
    return info.selectors - set(sdk.index.selectors) - runtime_selectors(zig_dir) - EXTRA_SELECTORS


def newer_selectors(info: ObjectInfo, sdk: Sdk) -> set[str]:
    """Selectors that no declaration in the scan offers at or below macOS 13."""
    return {s for s in info.selectors if sdk.index.selectors.get(s, (0,)) > DEPLOYMENT_TARGET}


# ---------------------------------------------------------------------------------------------
# The checks


def _diagnostics(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stdout + proc.stderr).strip()


def test_generated_headers_cover_the_scan(sdks: dict[str, Sdk]) -> None:
    """The generator declares nearly everything: a regression here weakens every check."""
    for sdk in sdks.values():
        r = sdk.report
        assert r.classes >= 100 and r.methods >= 500, r  # Virtualization: ~100-115 classes
        # What needs CoreGraphics, AppKit or vmnet types (CGSize, NSScreen, vmnet_network_ref),
        # and NSString's va_list initializers: in neither scan.
        assert r.skipped_methods + r.skipped_properties <= 20, r
        assert r.skipped_classes <= 1, r  # VZVirtualMachineView : NSView


def test_compiles_for_macos_13(compiled: Compiled) -> None:
    assert compiled.proc.returncode == 0, _diagnostics(compiled.proc)
    assert compiled.obj.stat().st_size > 0


def test_selectors_are_in_the_sdk_scan(compiled: Compiled, zig_dir: Path) -> None:
    assert compiled.proc.returncode == 0, _diagnostics(compiled.proc)
    info = read_object(compiled.obj)
    assert "requestStopWithError:" in info.selectors  # the object was read
    assert not unknown_selectors(info, compiled.sdk, zig_dir)


def test_only_guarded_selectors_are_newer_than_macos_13(compiled: Compiled) -> None:
    assert compiled.proc.returncode == 0, _diagnostics(compiled.proc)
    info = read_object(compiled.obj)
    assert newer_selectors(info, compiled.sdk) == GUARDED_SELECTORS[compiled.sdk.arch]


def test_classes_and_externs_are_in_the_sdk_scan(compiled: Compiled) -> None:
    assert compiled.proc.returncode == 0, _diagnostics(compiled.proc)
    info = read_object(compiled.obj)
    assert "VZVirtualMachine" in info.undefined_classes
    assert info.undefined_classes - compiled.sdk.index.classes == set()
    assert info.defined_classes == OWN_CLASSES
    assert info.undefined_data - compiled.sdk.index.externs == set()


# ---- plant an error in a copy: each check must fail ------------------------------------------


def _planted(tmp_path: Path, old: str, new: str, count: int = 1) -> Path:
    text = SOURCE.read_text()
    assert text.count(old) >= count, f"{old!r} is not in {SOURCE.name} {count} time(s)"
    path = tmp_path / SOURCE.name
    path.write_text(text.replace(old, new, count))
    return path


def _compile_planted(zig_dir: Path, sdk: Sdk, source: Path) -> subprocess.CompletedProcess[str]:
    return compile_mm(zig_dir, sdk, source, source.with_suffix(".o"))


def test_planted_misspelled_selector_fails(
    zig_dir: Path, sdks: dict[str, Sdk], tmp_path: Path
) -> None:
    src = _planted(
        tmp_path, "[vm_ requestStopWithError:&error]", "[vm_ requestStopWithErorr:&error]"
    )
    proc = _compile_planted(zig_dir, sdks["arm64"], src)
    assert proc.returncode != 0
    assert "requestStopWithErorr:" in _diagnostics(proc)
    assert "objc-method-access" in _diagnostics(proc) or "no visible @interface" in _diagnostics(
        proc
    )


def test_planted_unguarded_call_fails(zig_dir: Path, sdks: dict[str, Sdk], tmp_path: Path) -> None:
    # The first guard in the file is save's: saveMachineStateToURL: then runs on macOS 13 too.
    src = _planted(tmp_path, "if (@available(macOS 14, *)) {", "if (true) {")
    proc = _compile_planted(zig_dir, sdks["arm64"], src)
    assert proc.returncode != 0
    out = _diagnostics(proc)
    assert "saveMachineStateToURL:completionHandler:" in out
    assert "unguarded-availability-new" in out


def test_planted_unknown_property_fails(
    zig_dir: Path, sdks: dict[str, Sdk], tmp_path: Path
) -> None:
    src = _planted(tmp_path, "net.MACAddress = mac;", "net.macAddress = mac;")
    proc = _compile_planted(zig_dir, sdks["arm64"], src)
    assert proc.returncode != 0
    assert "property 'macAddress' not found" in _diagnostics(proc)


def _append(tmp_path: Path, code: str) -> Path:
    path = tmp_path / SOURCE.name
    path.write_text(SOURCE.read_text() + "\n" + code + "\n")
    return path


def test_planted_selector_literal_is_caught_in_the_object(
    zig_dir: Path, sdks: dict[str, Sdk], tmp_path: Path
) -> None:
    """A selector the compiler cannot see as a call (@selector, performSelector:) compiles;
    the object check still finds it."""
    sdk = sdks["arm64"]
    src = _append(
        tmp_path, "SEL asvz_planted_selector() { return @selector(requestStopWithErorr:); }"
    )
    proc = _compile_planted(zig_dir, sdk, src)
    assert proc.returncode == 0, _diagnostics(proc)
    info = read_object(src.with_suffix(".o"))
    assert unknown_selectors(info, sdk, zig_dir) == {"requestStopWithErorr:"}


def test_planted_newer_selector_is_caught_in_the_object(
    zig_dir: Path, sdks: dict[str, Sdk], tmp_path: Path
) -> None:
    """setNestedVirtualizationEnabled: is macOS 15; as a selector literal no availability check
    sees it, the object check does."""
    sdk = sdks["arm64"]
    src = _append(
        tmp_path,
        "SEL asvz_planted_selector() { return @selector(setNestedVirtualizationEnabled:); }",
    )
    proc = _compile_planted(zig_dir, sdk, src)
    assert proc.returncode == 0, _diagnostics(proc)
    info = read_object(src.with_suffix(".o"))
    assert newer_selectors(info, sdk) - GUARDED_SELECTORS["arm64"] == {
        "setNestedVirtualizationEnabled:"
    }


def test_runtime_selectors_are_read_from_the_header(zig_dir: Path) -> None:
    names = runtime_selectors(zig_dir)
    assert {
        "respondsToSelector:",
        "performSelector:withObject:",
        "class",
        "hash",
        "description",
    } <= names
    assert all(_SELECTOR.fullmatch(n) for n in names)


# ---------------------------------------------------------------------------------------------
# The portable core, compiled for macOS: Linux-only APIs (SOCK_CLOEXEC, MSG_NOSIGNAL, pipe2,
# timerfd...) build fine here and would break only on the Mac.

CORE_SOURCES = sorted((REPO / "native" / "vz" / "src" / "core").glob("*.cpp"))


def compile_core(
    zig_dir: Path, arch: str, source: Path, obj: Path
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "ziglang", "c++",
        "-target", TARGETS[arch],
        "-std=c++17", "-x", "c++",
        *WARNINGS,
        "-nostdlib",
        "-I", str(zig_dir / "lib" / "libcxx" / "include"),
        "-I", str(zig_dir / "lib" / "libcxxabi" / "include"),
        *(f"-D{d}" for d in LIBCXX_DEFINES),
        "-I", str(INCLUDE),
        "-c", "-o", str(obj), str(source),
    ]  # fmt: skip
    cache = zig_cache()
    cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(cache)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, env=env)


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_portable_core_compiles_for_macos(zig_dir: Path, arch: str, tmp_path: Path) -> None:
    assert CORE_SOURCES, "native/vz/src/core has no sources"
    failed = {}
    for src in CORE_SOURCES:
        proc = compile_core(zig_dir, arch, src, tmp_path / f"{src.stem}.o")
        if proc.returncode != 0:
            failed[src.name] = _diagnostics(proc)
    assert not failed, failed


def test_planted_linux_only_api_fails_the_core_check(zig_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "linux_only.cpp"
    src.write_text(
        "#include <sys/socket.h>\n"
        "int f() { return socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0); }\n"
    )
    proc = compile_core(zig_dir, "arm64", src, tmp_path / "linux_only.o")
    assert proc.returncode != 0
    assert "SOCK_CLOEXEC" in _diagnostics(proc)
