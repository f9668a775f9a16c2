#!/usr/bin/env bash
# The main job, end to end, with nothing to download: base image built locally -> project ->
# task clones -> a command in each -> clean up. Does all of its own set-up.
source "$(dirname "$0")/lib.sh"
as_setup
cd "$REPO"
log "agent-swarm providers"
agent-swarm providers
# The libvirt provider (base image build, project, tasks) lands with the Linux provider;
# until then the main job stops here, reporting what this host can run.
