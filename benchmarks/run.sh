#!/usr/bin/env bash
# Run the benchmarks (sets up like ci/test.sh): the native core, then swarm operations
# through libvirtd. Needs root (XFS reflink, libvirtd).
# Usage: bash benchmarks/run.sh [--quick]
source "$(dirname "$0")/../ci/lib.sh"
as_setup
cd "$REPO"
"$VENV/bin/python" benchmarks/bench_native.py "$@"
bash ci/start-libvirt.sh
exec "$VENV/bin/python" benchmarks/bench_swarm.py "$@"
