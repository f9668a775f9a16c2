#!/usr/bin/env bash
# Run the whole test suite, doing all of its own set-up (apt packages, venv, build).
# Usage: bash ci/test.sh [pytest args...]
source "$(dirname "$0")/lib.sh"
as_setup
cd "$REPO"
log "pytest"
exec "$VENV/bin/python" -m pytest "$@"
