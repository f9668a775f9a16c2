# Shared set-up for the README commands and CI. Source it; it is idempotent.
#   as_setup [extra apt packages...]  -> apt packages, venv in $VENV, agent-swarm installed
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AGENT_SWARM_VENV:-$REPO/.venv}"
export DEBIAN_FRONTEND=noninteractive

# Packages every run needs: a compiler and Python headers for the native core, the
# independent image tools the tests check our images with, and for the encrypted env vars a
# real OS keystore (gnome-keyring's Secret Service on a private D-Bus session bus) plus the
# independent tools the tests inspect it and the registry with (secret-tool, sqlite3);
# MinGW-w64 + Wine: the native core's Windows paths, cross-built and run (tests/native).
BASE_APT=(python3 python3-venv python3-dev g++ make zlib1g-dev pkg-config
          qemu-utils libvhdi-utils xfsprogs util-linux e2fsprogs
          dbus gnome-keyring libsecret-1-0 libsecret-tools sqlite3
          g++-mingw-w64-x86-64-posix wine64 wine)
# The Linux provider: libvirt + QEMU, and what building the Debian base image needs.
LINUX_APT=(libvirt-daemon-system libvirt-daemon libvirt-clients libvirt-dev
           qemu-system-x86 qemu-system-data openssh-client
           mmdebstrap grub-pc-bin grub-efi-amd64-bin grub2-common dosfstools mtools
           procps iproute2 tini passt)

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
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$REPO[libvirt,test,macos-check]" "$@"
}

# libvirtd and virtlogd, started when not running (no systemd needed); see the script.
start_libvirt() {
  [ "$(id -u)" -eq 0 ] || return 0
  log "libvirtd"
  bash "$REPO/ci/start-libvirt.sh"
}

as_setup() {
  ensure_apt "${BASE_APT[@]}" "${LINUX_APT[@]}" "$@"
  # Every tool the test suite uses is now installed: a missing one is a failure, not a skip
  # (tests/tests_support.py strict_tools).
  export AGENT_SWARM_STRICT_TOOLS=1
  ensure_venv
  install_agent_swarm
  export PATH="$VENV/bin:$PATH"
  start_libvirt
}
