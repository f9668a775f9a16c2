#!/usr/bin/env bash
# macOS CI (.github/workflows/macos.yml runs this; it also runs as is on a developer's Mac).
#   1. builds and installs agent-swarm with its test extra into a venv (on macOS the top-level
#      CMake builds the VZ helper agent-swarm-vz with the Virtualization backend and signs it)
#   2. checks the installed helper: signed with the com.apple.security.virtualization
#      entitlement (without it every VZ call fails at run time), and it runs
#   3. runs the tests that need no VM: tests/vz, tests/native, tests/unit
#   4. when this Mac can run VMs: makes a raw Ubuntu cloud image and runs the VZ provider
#      contract against real Virtualization.framework VMs. GitHub-hosted macOS runners are
#      VMs without nested virtualization (kern.hv_support=0): there this step reports
#      "skipped" and the job still passes; a bare-metal or self-hosted Mac runs it.
# Environment (all optional):
#   PYTHON                interpreter for the venv (default: python3 on PATH, the one
#                         actions/setup-python installed)
#   AGENT_SWARM_VENV      venv directory (default: build/macos-venv in the checkout)
#   AGENT_SWARM_CI_CACHE  downloaded and converted images (default: ~/.cache/agent-swarm/ci)
#   UBUNTU_RELEASE        Ubuntu cloud image release (default: 24.04)
#   VZ_DISK_SIZE          size of the raw guest disk (default: 10G)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${AGENT_SWARM_VENV:-$REPO/build/macos-venv}"
CACHE="${AGENT_SWARM_CI_CACHE:-$HOME/.cache/agent-swarm/ci}"
UBUNTU_RELEASE="${UBUNTU_RELEASE:-24.04}"
VZ_DISK_SIZE="${VZ_DISK_SIZE:-10G}"
IMAGE_BASE_URL="https://cloud-images.ubuntu.com/releases/${UBUNTU_RELEASE}/release"

export HOMEBREW_NO_AUTO_UPDATE=1 HOMEBREW_NO_INSTALL_CLEANUP=1 HOMEBREW_NO_ENV_HINTS=1

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
# A line in the GitHub job summary (and an annotation) when running under Actions.
notice() {
  echo "$*"
  if [ -n "${GITHUB_ACTIONS:-}" ]; then
    echo "::notice::$*"
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
      echo "$*" >>"$GITHUB_STEP_SUMMARY"
    fi
  fi
}

[ "$(uname -s)" = Darwin ] || die "ci/macos.sh runs on macOS (this is $(uname -s))"
cd "$REPO"
log "macOS $(sw_vers -productVersion) on $(uname -m), $("$PYTHON" --version 2>&1)"

# ---- 1. venv + a real (non-editable) install: tests import what users get ------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
log "building and installing agent-swarm[test]"
"$VENV/bin/python" -m pip install --disable-pip-version-check "${REPO}[test]"
export PATH="$VENV/bin:$PATH"

# qemu-img: the native tests compare our image code with it (they skip without it), and
# step 4 converts the cloud image with it.
if ! command -v qemu-img >/dev/null; then
  log "brew install qemu (for qemu-img)"
  brew install qemu
fi

# ---- 2. the installed helper: present, signed with the VZ entitlement, runs -------------------
# Imported from / so the checkout cannot shadow the installed package.
HELPER="$(cd / && "$VENV/bin/python" -c \
  'import pathlib, agent_swarm; print(pathlib.Path(agent_swarm.__file__).parent / "bin" / "agent-swarm-vz")')"
[ -x "$HELPER" ] || die "the installed package has no helper at $HELPER"
log "helper: $HELPER"
file "$HELPER"

log "codesign --verify"
codesign --verify --strict --verbose=2 "$HELPER"
# `codesign -d` prints the entitlements on stdout (plist or, on newer macOS, a [Dict] dump)
# and "Executable=..." on stderr; either form names the key.
entitlements="$(codesign -d --entitlements - "$HELPER" 2>&1)" ||
  die "codesign -d failed for $HELPER: $entitlements"
printf '%s\n' "$entitlements"
grep -q 'com\.apple\.security\.virtualization' <<<"$entitlements" ||
  die "$HELPER is not signed with the com.apple.security.virtualization entitlement"

log "agent-swarm-vz --version"
version="$("$HELPER" --version)"
echo "$version"
# On macOS the wheel must carry the Virtualization backend, never the fake one.
case "$version" in
  *"backend vz"*) ;;
  *) die "the installed helper is not the VZ build: $version" ;;
esac

# ---- 3. tests that need no VM -----------------------------------------------------------------
log "pytest tests/vz tests/native tests/unit"
"$VENV/bin/python" -m pytest tests/vz tests/native tests/unit -m "not integration and not root"

# ---- 4. real VZ VMs, where this Mac can run them ----------------------------------------------
# kern.hv_support is 1 when Hypervisor.framework (which VZ runs on) is usable: Apple Silicon
# or VT-x hardware, and not a VM without nested virtualization such as GitHub's runners.
hv_support="$(sysctl -n kern.hv_support 2>/dev/null || echo 0)"
if [ "$hv_support" != 1 ]; then
  notice "skipped: VZ not supported on this runner (kern.hv_support=${hv_support})"
  exit 0
fi

case "$(uname -m)" in
  arm64) ubuntu_arch=arm64 ;;
  x86_64) ubuntu_arch=amd64 ;;
  *) die "no Ubuntu cloud image for $(uname -m)" ;;
esac
image_name="ubuntu-${UBUNTU_RELEASE}-server-cloudimg-${ubuntu_arch}.img"
image="$CACHE/$image_name"
raw="$CACHE/${image_name%.img}.raw"
mkdir -p "$CACHE"

# The published checksum list decides whether a cached download is still current.
log "Ubuntu ${UBUNTU_RELEASE} cloud image (${ubuntu_arch})"
curl -fsSL --retry 3 -o "$CACHE/SHA256SUMS" "$IMAGE_BASE_URL/SHA256SUMS"
want_sha="$(awk -v f="$image_name" '$2 == "*" f || $2 == f { print $1 }' "$CACHE/SHA256SUMS")"
[ -n "$want_sha" ] || die "$image_name is not listed in $IMAGE_BASE_URL/SHA256SUMS"
sha256_of() { shasum -a 256 "$1" | awk '{ print $1 }'; }
if [ ! -f "$image" ] || [ "$(sha256_of "$image")" != "$want_sha" ]; then
  log "downloading $IMAGE_BASE_URL/$image_name"
  rm -f "$raw"
  curl -fL --retry 3 -o "$image.part" "$IMAGE_BASE_URL/$image_name"
  [ "$(sha256_of "$image.part")" = "$want_sha" ] || die "checksum mismatch for $image_name"
  mv "$image.part" "$image"
fi

# VZ attaches raw disks only: convert the qcow2 cloud image once, then grow it (cloud-init's
# growpart fills the disk at first boot). The contract test clones this file for every VM
# (clonefile on APFS, so the copies are instant and share blocks).
if [ ! -f "$raw" ] || [ "$image" -nt "$raw" ]; then
  log "qemu-img convert -> raw ($VZ_DISK_SIZE)"
  qemu-img convert -p -O raw "$image" "$raw.part"
  qemu-img resize -f raw "$raw.part" "$VZ_DISK_SIZE"
  mv "$raw.part" "$raw"
fi

log "pytest tests/providers/test_vz_contract.py (real VZ)"
# The installed, signed helper and the real /var/db/dhcpd_leases: drop the test overrides.
unset AGENT_SWARM_VZ_HELPER AGENT_SWARM_VZ_LEASES AGENT_SWARM_VZ_FAKE
AGENT_SWARM_VZ_REAL=1 AGENT_SWARM_VZ_IMAGE="$raw" \
  "$VENV/bin/python" -m pytest tests/providers/test_vz_contract.py
notice "real VZ contract passed on macOS $(sw_vers -productVersion) ($(uname -m))"
