#!/usr/bin/env bash
# The cibuildwheel job of .github/workflows/wheels.yml, on Linux, macOS and Windows runners (Git
# Bash there): installs the pinned cibuildwheel and builds, repairs and tests the wheels of this
# runner's platform as [tool.cibuildwheel] in pyproject.toml says (docs/wheels.md).
#
#   bash ci/cibuildwheel.sh [OUTPUT_DIR]     (default: wheelhouse)
#
# Environment: CIBW_ARCHS (the workflow sets this runner's architecture; default: cibuildwheel's
# "auto"), any other CIBW_* setting, PYTHON (interpreter that runs cibuildwheel; default python3,
# else python). Linux builds run in cibuildwheel's manylinux/musllinux containers (Docker);
# ci/build-wheels.sh builds Linux wheels without containers.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CIBUILDWHEEL_PIN=cibuildwheel==4.3.5 # same pin as the test extra (tests/wheels/test_wheel_config.py)
out="${1:-wheelhouse}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
elif command -v python3 >/dev/null && python3 -c '' 2>/dev/null; then
  py=python3
else
  py=python # Windows: actions/setup-python provides python.exe only
fi
cd "$REPO"
log "$("$py" --version 2>&1), $CIBUILDWHEEL_PIN, archs ${CIBW_ARCHS:-auto}"
"$py" -m pip install -q --disable-pip-version-check "$CIBUILDWHEEL_PIN"
"$py" -m cibuildwheel --print-build-identifiers
"$py" -m cibuildwheel --output-dir "$out"
log "wheels in $out"
ls -l "$out"
