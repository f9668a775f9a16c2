#!/usr/bin/env bash
# The Linux manylinux_2_17 job of .github/workflows/wheels.yml (also runs as is on a Linux
# machine): builds the wheel for this Python with ci/build-wheels.sh (zig, no container) and
# tests it as tests/wheels/test_linux_wheel.py does: installed into a fresh venv where cc, c++
# and g++ fail, `agent-swarm --version`, `agent-swarm providers --json` and the native tests run
# against it from outside the checkout, and auditwheel reports manylinux_2_17.
#
#   bash ci/linux-wheels.sh [OUTPUT_DIR]     (default: wheelhouse; gets the wheel and the sdist)
#
# Environment: PYTHON (default python3), AGENT_SWARM_VENV (the venv pytest runs in; default
# build/linux-wheels-venv).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${AGENT_SWARM_VENV:-$REPO/build/linux-wheels-venv}"
out="${1:-wheelhouse}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

[ "$(uname -s)" = Linux ] || {
  echo "error: ci/linux-wheels.sh runs on Linux" >&2
  exit 1
}
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# Only pytest: the test builds the wheel with its own tool venv (ci/build-wheels.sh).
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "pytest>=8" "pytest-timeout>=2.2"
cd "$REPO"
log "pytest tests/wheels/test_linux_wheel.py (wheels kept in $out)"
AGENT_SWARM_WHEELHOUSE="$out" "$VENV/bin/python" -m pytest -p no:cacheprovider tests/wheels/test_linux_wheel.py
ls -l "$out"
