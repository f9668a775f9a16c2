#!/usr/bin/env bash
# Run the benchmarks (sets up like ci/test.sh): the native core, then swarm operations
# through libvirtd. Needs root (XFS reflink, libvirtd).
# Usage: bash benchmarks/run.sh [--quick]
#        bash benchmarks/run.sh --warm [--quick]   (warm clones vs cold boots, real guests;
#                                                   about 20 min here, docs/warm-clones.md)
source "$(dirname "$0")/../ci/lib.sh"
as_setup
cd "$REPO"
if [ "${1:-}" = "--warm" ]; then
  shift
  bash ci/start-libvirt.sh
  exec "$VENV/bin/python" benchmarks/bench_warm.py "$@"
fi
"$VENV/bin/python" benchmarks/bench_native.py "$@"
bash ci/start-libvirt.sh
exec "$VENV/bin/python" benchmarks/bench_swarm.py "$@"
