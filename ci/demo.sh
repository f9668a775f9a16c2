#!/usr/bin/env bash
# The main job, end to end, with nothing to download: a base image built locally from Debian
# packages -> a project VM -> two task VMs cloned from it in parallel -> a command in each ->
# clean up. Does all of its own set-up. Uses a throwaway state directory.
source "$(dirname "$0")/lib.sh"
as_setup
export AGENT_SWARM_HOME="${AGENT_SWARM_HOME:-$(mktemp -d /tmp/agent-swarm-demo.XXXXXX)}"
log "state directory: $AGENT_SWARM_HOME"

cleanup() {
  log "cleaning up"
  agent-swarm bulk delete --project demo >/dev/null 2>&1 || true
  agent-swarm project delete demo >/dev/null 2>&1 || true
  agent-swarm doctor || true
}
trap cleanup EXIT

agent-swarm providers
log "base image (built once from Debian packages, then cached)"
agent-swarm init-base --build debian-12
log "project VM: boots, runs ~/.agent-swarm/setup.sh"
agent-swarm project create demo --memory 1G
agent-swarm project run demo -- 'echo "hello from the template" > ~/hello.txt'
log "seal the project as a template, saved running (a warm template: one more boot, once)"
agent-swarm project stop demo --warm
log "two task VMs, cloned copy-on-write and resumed from the template's memory, in parallel"
agent-swarm bulk create demo task-1 task-2
log "fork a running task: memory and disk, a new identity"
agent-swarm run task-1 -- 'echo "made in task-1 before the fork" > /dev/shm/note'
agent-swarm fork task-1 task-1b
agent-swarm run task-1b -- 'echo "$(hostname): $(cat /dev/shm/note)"'
agent-swarm delete task-1b
agent-swarm list
agent-swarm status
for t in task-1 task-2; do
  log "run in $t"
  agent-swarm run "$t" -- 'echo "$(hostname): $(cat ~/hello.txt)"'
done
log "done"
