#!/usr/bin/env bash
# Start virtlogd and libvirtd when they are not running, and make sure libvirtd answers.
#
# libvirtd is started under `tini -s` (a child subreaper): it daemonizes QEMU (for VMs and
# for its capabilities probes) and then waits for those processes to disappear. Where PID 1
# reaps orphans late (as in some sandboxes and containers), that wait can block libvirtd
# for minutes; under tini the orphans are reaped at once.
set -u
[ "$(id -u)" -eq 0 ] || { echo "start-libvirt: needs root" >&2; exit 1; }
TINI_PID=/run/agent-swarm-libvirtd-tini.pid
LOG=/var/log/libvirt/agent-swarm-libvirtd.log

pgrep -x virtlogd >/dev/null || virtlogd -d

# Without udev (containers, sandboxes) /dev/kvm stays root:root 0600. libvirt then decides
# on every call that its QEMU capability cache is stale (KVM worked when probing as root but
# is "not available" to its QEMU user) and re-probes QEMU: every define/start takes 5-15 s.
# Give it the owner and mode udev gives it on a normal Debian boot.
if [ -c /dev/kvm ] && getent group kvm >/dev/null \
   && [ "$(stat -c %G /dev/kvm)" != kvm ] && [ "$(stat -c %a /dev/kvm)" = 600 ]; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi

start() {
  mkdir -p "$(dirname "$LOG")"
  if command -v tini >/dev/null; then
    setsid tini -s -- libvirtd </dev/null >>"$LOG" 2>&1 &
    echo $! >"$TINI_PID"
  else
    libvirtd -d
  fi
}

stop_ours() {
  [ -f "$TINI_PID" ] && kill "$(cat "$TINI_PID")" 2>/dev/null
  [ -f /run/libvirtd.pid ] && kill "$(cat /run/libvirtd.pid)" 2>/dev/null
  sleep 2
  [ -f /run/libvirtd.pid ] && kill -9 "$(cat /run/libvirtd.pid)" 2>/dev/null
  rm -f "$TINI_PID" /run/libvirtd.pid
}

ours=0
if ! pgrep -x libvirtd >/dev/null; then start; ours=1; fi
qemu="$(command -v qemu-system-x86_64 || command -v qemu-system-aarch64)"

# 0: answers; 1: never listened within 60 s (e.g. a stale socket file); 2: listened but hung.
probe() {
  local deadline=$((SECONDS + 60)) rc
  while [ "$SECONDS" -lt "$deadline" ]; do
    timeout 90 virsh -c qemu:///system domcapabilities --virttype qemu \
      --emulatorbin "$qemu" >/dev/null 2>&1
    rc=$?
    [ "$rc" -eq 0 ] && return 0
    [ "$rc" -eq 124 ] && return 2
    # Not listening yet (connection refused, socket not there yet): retry shortly.
    sleep 0.5
  done
  return 1
}

for attempt in 1 2 3; do
  probe && exit 0
  if [ "$ours" -ne 1 ]; then
    echo "start-libvirt: the running libvirtd does not answer; restart it" >&2
    exit 1
  fi
  echo "start-libvirt: libvirtd did not answer; restarting it (attempt $attempt)" >&2
  stop_ours
  start
done
echo "start-libvirt: libvirtd did not come up (see $LOG)" >&2
exit 1
