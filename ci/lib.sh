# Shared set-up for the README commands and CI. Source it; it is idempotent.
#   as_setup [extra apt packages...]  -> apt packages, venv in $VENV, agent-swarm installed
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AGENT_SWARM_VENV:-$REPO/.venv}"
export DEBIAN_FRONTEND=noninteractive

# Packages every run needs: a compiler and Python headers for the native core, and the
# independent image tools the tests check our images with.
BASE_APT=(python3 python3-venv python3-dev g++ make zlib1g-dev pkg-config
          qemu-utils libvhdi-utils xfsprogs util-linux e2fsprogs)
# The Linux provider: libvirt + QEMU, and what building the Debian base image needs.
LINUX_APT=(libvirt-daemon-system libvirt-daemon libvirt-clients libvirt-dev
           qemu-system-x86 qemu-system-data openssh-client
           mmdebstrap grub-pc-bin grub-efi-amd64-bin grub2-common dosfstools mtools
           procps iproute2)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_apt() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    return 1
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip >/dev/null
}

install_agent_swarm() {
  # A real (non-editable) install: tests import what users get.
  log "building and installing agent-swarm (native core included)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$REPO[libvirt,test]" "$@"
}

# libvirtd and virtlogd, started as daemons when not running (no systemd needed), then
# warmed up: the first QEMU capabilities probe of a fresh libvirtd can hang (seen with
# libvirt 9.0 here); a libvirtd we started ourselves is restarted until it answers.
start_libvirt() {
  [ "$(id -u)" -eq 0 ] || return 0
  pgrep -x virtlogd >/dev/null || { log "starting virtlogd"; virtlogd -d; }
  local ours=0
  if ! pgrep -x libvirtd >/dev/null; then log "starting libvirtd"; libvirtd -d; ours=1; fi
  for attempt in 1 2 3; do
    for _ in $(seq 1 50); do [ -S /run/libvirt/libvirt-sock ] && break; sleep 0.2; done
    if timeout 90 virsh -c qemu:///system domcapabilities --virttype qemu \
         --emulatorbin "$(command -v qemu-system-x86_64)" >/dev/null 2>&1; then
      return 0
    fi
    [ "$ours" -eq 1 ] || { log "libvirtd does not answer; restart it"; return 1; }
    log "libvirtd did not answer its capabilities probe; restarting it (attempt $attempt)"
    kill "$(cat /run/libvirtd.pid)" 2>/dev/null || true
    sleep 2
    kill -9 "$(cat /run/libvirtd.pid 2>/dev/null)" 2>/dev/null || true
    rm -f /run/libvirtd.pid
    libvirtd -d
  done
  log "libvirtd did not come up"; return 1
}

as_setup() {
  ensure_apt "${BASE_APT[@]}" "${LINUX_APT[@]}" "$@"
  ensure_venv
  install_agent_swarm
  export PATH="$VENV/bin:$PATH"
  start_libvirt
}
