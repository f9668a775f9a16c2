#!/usr/bin/env bash
# Run the benchmarks (sets up like ci/test.sh). Needs root for the XFS reflink part.
# Usage: bash benchmarks/run.sh [--quick]
source "$(dirname "$0")/../ci/lib.sh"
as_setup
cd "$REPO"
exec "$VENV/bin/python" benchmarks/bench_native.py "$@"
