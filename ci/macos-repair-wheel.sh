#!/usr/bin/env bash
# cibuildwheel's repair step for macOS wheels ([tool.cibuildwheel.macos] repair-wheel-command
# in pyproject.toml):
#
#   bash ci/macos-repair-wheel.sh WHEEL DEST_DIR DELOCATE_ARCHS
#
#   1. delocate-wheel, as cibuildwheel's default repair does: copies any non-system dylib into
#      the wheel, rewrites install names, checks the architectures (DELOCATE_ARCHS);
#   2. signs the VZ helper inside the repaired wheel (agent_swarm/bin/agent-swarm-vz) again, with
#      its com.apple.security.virtualization entitlement: delocate may rewrite a Mach-O (install
#      names, rpaths) and then signs it ad hoc *without* entitlements, and without the
#      entitlement every Virtualization.framework call fails at run time. So the signature that
#      ships is made after delocate, never before;
#   3. checks the helper in the final wheel: `codesign --verify --strict`, `codesign -d
#      --entitlements -` names the entitlement, and it carries the wheel's architectures.
# The helper is replaced inside the wheel in place (same name, RECORD's hash and size updated).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENTITLEMENTS="$REPO/native/vz/agent-swarm-vz.entitlements"
HELPER_IN_WHEEL="agent_swarm/bin/agent-swarm-vz"
ENTITLEMENT="com.apple.security.virtualization"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

[ $# -eq 3 ] || die "usage: ci/macos-repair-wheel.sh WHEEL DEST_DIR DELOCATE_ARCHS"
wheel="$1"
dest="$2"
archs="$3"
[ "$(uname -s)" = Darwin ] || die "ci/macos-repair-wheel.sh runs on macOS (this is $(uname -s))"
[ -f "$wheel" ] || die "no wheel $wheel"
[ -f "$ENTITLEMENTS" ] || die "no entitlements file $ENTITLEMENTS"

# cibuildwheel's build environment has delocate (its default repair uses it).
PY="$(command -v python || command -v python3)" || die "no python on PATH"
if ! command -v delocate-wheel >/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check "delocate>=0.11"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ---- 1. delocate ------------------------------------------------------------------------------
log "delocate-wheel --require-archs $archs $(basename "$wheel")"
delocate-wheel --require-archs "$archs" -w "$work/delocated" -v "$wheel"
delocated=("$work/delocated"/*.whl)
if [ ${#delocated[@]} -ne 1 ] || [ ! -f "${delocated[0]}" ]; then
  die "delocate-wheel wrote no wheel"
fi
name="$(basename "${delocated[0]}")"

# ---- 2. sign the helper, and put it back into the wheel (RECORD's hash and size updated) -----
# wheel_helper get WHEEL FILE: the helper out of the wheel (executable);
# wheel_helper put WHEEL FILE OUT: WHEEL with the helper replaced by FILE, written to OUT.
wheel_helper() {
  "$PY" - "$HELPER_IN_WHEEL" "$@" <<'PYEOF'
import base64, csv, hashlib, io, os, shutil, sys, zipfile

member, action, wheel, path = sys.argv[1:5]
with zipfile.ZipFile(wheel) as z:
    info = z.getinfo(member)
    if action == "get":
        assert (info.external_attr >> 16) & 0o111, f"{member} is not executable in {wheel}"
        with z.open(info) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(path, 0o755)
        sys.exit(0)
    data = open(path, "rb").read()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(sys.argv[5], "w", zipfile.ZIP_DEFLATED) as out:
        for item in z.infolist():
            body = z.read(item)
            if item.filename == member:
                body = data
            elif item.filename.endswith(".dist-info/RECORD"):
                rows = list(csv.reader(io.StringIO(body.decode())))
                for row in rows:
                    if row and row[0] == member:
                        row[1:3] = [f"sha256={digest}", str(len(data))]
                buf = io.StringIO()
                csv.writer(buf, lineterminator="\n").writerows(rows)
                body = buf.getvalue().encode()
            out.writestr(item, body)
PYEOF
}
helper="$work/agent-swarm-vz"
wheel_helper get "${delocated[0]}" "$helper" ||
  die "the wheel has no $HELPER_IN_WHEEL (the top-level CMakeLists.txt installs it on APPLE)"
log "codesign $HELPER_IN_WHEEL with $(basename "$ENTITLEMENTS")"
codesign -s - -f --entitlements "$ENTITLEMENTS" "$helper"
mkdir -p "$dest"
final="$dest/$name"
wheel_helper put "${delocated[0]}" "$helper" "$final"

# ---- 3. check the helper as it is in the final wheel ----------------------------------------
mkdir -p "$work/check"
wheel_helper get "$final" "$work/check/agent-swarm-vz"
check="$work/check/agent-swarm-vz"
codesign --verify --strict --verbose=2 "$check"
entitlements="$(codesign -d --entitlements - "$check" 2>&1)" ||
  die "codesign -d failed: $entitlements"
printf '%s\n' "$entitlements"
grep -q "${ENTITLEMENT//./\\.}" <<<"$entitlements" ||
  die "$HELPER_IN_WHEEL in $name is not signed with $ENTITLEMENT"
have="$(lipo -archs "$check")"
for a in ${archs//,/ }; do
  case " $have " in
    *" $a "*) ;;
    *) die "$HELPER_IN_WHEEL is built for '$have', the wheel needs $a" ;;
  esac
done
log "$name: helper signed with $ENTITLEMENT ($have)"
