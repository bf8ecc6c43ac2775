#!/usr/bin/env bash
# CI for issue 4 (image builder): build a MEC-ConPaaS edge image from the
# project's roles, run the image-spec test on it and boot it under
# qemu-system-aarch64 (tests/image).  Runs as root with no stdin on a fresh
# Debian 12 x86-64 machine; installs what it needs; cleans up every mount,
# loop device, chroot process and qemu process it made; non-zero on failure.
#
# Environment:
#   MEC_CONPAAS_IMAGE_PROFILE  image-builder/profiles.ini section (default: ci)
#   MEC_CONPAAS_IMAGE_BOOT     "all" (default): good + malformed + missing-file
#                              boots, run in parallel; "good": one boot;
#                              "none": spec test only
#   MEC_CONPAAS_IMAGE_OUT      where the image goes (default $MEC_CONPAAS_IMAGE_WORK/out)
#   MEC_CONPAAS_IMAGE_PREBUILT an image built before (NAME.img.xz): test it, build nothing
#   MEC_CONPAAS_IMAGE_WORK     work dir (default image-builder/build-cache/ci; keeps the
#                              debootstrap/apt cache between runs on one machine)
set -euo pipefail
exec </dev/null

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PROFILE="${MEC_CONPAAS_IMAGE_PROFILE:-ci}"
BOOT="${MEC_CONPAAS_IMAGE_BOOT:-all}"
WORK="${MEC_CONPAAS_IMAGE_WORK:-$REPO/image-builder/build-cache/ci}"
# Canonical path: cleanup matches it against /proc/*/root and /proc/self/mounts,
# which show real paths (image-builder/build-cache may be a symlink to a shared cache).
mkdir -p "$WORK"
WORK="$(readlink -f "$WORK")"
OUT="${MEC_CONPAAS_IMAGE_OUT:-$WORK/out}"
VENV="$WORK/venv"
TESTTMP="$WORK/test-tmp"
ARTIFACTS="$WORK/artifacts"
T0=$(date +%s)

log() { echo "[tools/ci/image.sh $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }

cleanup() {
    local rc=$?
    set +e
    log "cleanup"
    # qemu processes whose disk is under our work dir (started by the tests).
    for pid in $(pgrep -f '^qemu-system-aarch64 '); do
        if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$WORK/"; then
            log "killing qemu $pid"; kill "$pid"; sleep 2; kill -9 "$pid" 2>/dev/null
        fi
    done
    # The good guest's backbone tap (tests/image/imagelib.py Backbone), if a killed
    # test run left it (image runs go one at a time on a machine).
    ip link del mecimg0 2>/dev/null && log "deleted tap mecimg0"
    # Processes chrooted into our build roots.
    for p in /proc/[0-9]*; do
        root=$(readlink "$p/root" 2>/dev/null) || continue
        case "$root" in "$WORK"/*) log "killing chroot process ${p#/proc/}"; kill -9 "${p#/proc/}";; esac
    done
    # Mounts below the work dir, deepest first.
    awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
        log "umount $m"; umount "$m" || umount -l "$m"
    done
    # Loop devices backed by files below the work dir.
    losetup -n -l -O NAME,BACK-FILE 2>/dev/null | while read -r dev file; do
        case "$file" in "$WORK"/*) log "losetup -d $dev"; losetup -d "$dev";; esac
    done
    rm -rf "$TESTTMP"
    log "exit $rc after $(( $(date +%s) - T0 )) s"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "tools/ci/image.sh must run as root" >&2; exit 1; }

log "host packages"
export DEBIAN_FRONTEND=noninteractive
# Another apt run on the machine holds the lock: wait for it (up to 10 min; the update's
# lists lock: tools/ci/apt-update.sh).
APT=(apt-get -o DPkg::Lock::Timeout=600)
bash "$REPO/tools/ci/apt-update.sh"
"${APT[@]}" install -y -qq --no-install-recommends \
    debootstrap qemu-user-static binfmt-support qemu-system-arm ipxe-qemu \
    mtools dosfstools e2fsprogs fdisk util-linux xz-utils openssh-client \
    python3 python3-venv ca-certificates gpgv debian-archive-keyring >/dev/null

if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 || true
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64

log "python venv (ansible-core + the bundle with community.general, pinned like the playbooks'; the manager for the tests)"
mkdir -p "$WORK" "$OUT" "$ARTIFACTS"
[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
# The same ansible-core as tools/deploy (a constraints file): the roles run under one
# Ansible, whether over SSH or the chroot connection.  The checkout itself: the image
# tests run the real manager that booted nodes register and enroll with.
"$VENV/bin/pip" install -q --no-cache-dir -c "$REPO/tools/deploy/requirements.txt" \
    ansible-core ansible pytest -e "$REPO" 2>&1 | { grep -v "^WARNING: Location" || true; }
"$VENV/bin/ansible-doc" -t connection community.general.chroot >/dev/null

if [ -n "${MEC_CONPAAS_IMAGE_PREBUILT:-}" ]; then
    # Tests again on an image built before (its manifest beside it): no build.
    IMAGE="$(readlink -f "$MEC_CONPAAS_IMAGE_PREBUILT")"
    [ -f "$IMAGE" ] || { echo "MEC_CONPAAS_IMAGE_PREBUILT: no file $MEC_CONPAAS_IMAGE_PREBUILT" >&2; exit 2; }
    log "no build: testing $IMAGE"
else
    log "build (profile $PROFILE)"
    VERSION="$(sed -n 's/^version *= *//p' "$REPO/setup.cfg")-ci-g$(git -C "$REPO" rev-parse --short=10 HEAD 2>/dev/null || echo nogit)"
    "$VENV/bin/python" "$REPO/image-builder/build.py" --profile "$PROFILE" --version "$VERSION" \
        --work-dir "$WORK" --out-dir "$OUT" | tee "$ARTIFACTS/build.log"
    SUMMARY="$(tail -n 1 "$ARTIFACTS/build.log")"
    IMAGE="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["image"])' "$SUMMARY")"
    log "built $IMAGE ($(du -h "$IMAGE" | cut -f1))"
fi

log "tests (boot: $BOOT)"
case "$BOOT" in
    all) SELECT=(); export MEC_CONPAAS_BOOTS=good,malformed,missing ;;
    good) SELECT=(-k "not malformed and not missing"); export MEC_CONPAAS_BOOTS=good ;;
    none) SELECT=(-m "not emulated_boot"); export MEC_CONPAAS_BOOTS= ;;
    *) echo "MEC_CONPAAS_IMAGE_BOOT must be all, good or none" >&2; exit 2 ;;
esac
mkdir -p "$TESTTMP"
MEC_CONPAAS_IMAGE="$IMAGE" MEC_CONPAAS_IMAGE_REQUIRED=1 MEC_CONPAAS_TEST_TMP="$TESTTMP" \
MEC_TEST_ARTIFACTS="${MEC_TEST_ARTIFACTS:-$ARTIFACTS}" \
MEC_CONPAAS_ARTIFACTS="$ARTIFACTS" \
    "$VENV/bin/python" -m pytest -p no:cacheprovider -v -rs "$REPO/tests/image" "${SELECT[@]}"
log "OK"
