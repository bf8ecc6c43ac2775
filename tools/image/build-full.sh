#!/usr/bin/env bash
# The full researcher image (profile "edge": all roles, xz -1) with the same
# checks as CI: image-spec test and the emulated boots (MEC_CONPAAS_IMAGE_BOOT,
# default all).  Output in image-builder/out/.  Too long for CI together with
# the rest of the suite when caches are cold; see image-builder/README.rst,
# "What runs where".  tools/image/build-node.sh runs this for the "node" profile.
#
# Writes the run's wall time and test counts to bench/results/ci-image-PROFILE-build-UTC.json
# (-tests- instead of -build- with MEC_CONPAAS_IMAGE_PREBUILT)
# (tools/ci/result.py, as CI's parts do), then, unless MEC_CONPAAS_IMAGE_BENCH=0, runs
# bench/image_build.py --quick on the result (JSON + PNG in bench/results/).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export MEC_CONPAAS_IMAGE_PROFILE="${MEC_CONPAAS_IMAGE_PROFILE:-edge}"
export MEC_CONPAAS_IMAGE_WORK="${MEC_CONPAAS_IMAGE_WORK:-$REPO/image-builder/build-cache}"
export MEC_CONPAAS_IMAGE_OUT="${MEC_CONPAAS_IMAGE_OUT:-$REPO/image-builder/out}"
JUNIT="$(mktemp -d)"
trap 'rm -rf "$JUNIT"' EXIT
export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:-} --junitxml=$JUNIT/junit-build.xml"
LOAD="$(cat /proc/loadavg)"
T0=$(date +%s)
RC=0
bash "$REPO/tools/ci/image.sh" || RC=$?
echo "tools/image/build-full.sh (${MEC_CONPAAS_IMAGE_PROFILE}): build + tests took $(( $(date +%s) - T0 )) s (exit $RC)"
# A test run on an image built before (MEC_CONPAAS_IMAGE_PREBUILT) is recorded as "-tests".
PART="image-$MEC_CONPAAS_IMAGE_PROFILE-$([ -n "${MEC_CONPAAS_IMAGE_PREBUILT:-}" ] && echo tests || echo build)"
MEC_CI_RESULT_RUNNER=tools/image/build-full.sh python3 "$REPO/tools/ci/result.py" "$PART" "$RC" "$T0" \
    "$(date +%s)" "$LOAD" "$REPO/bench/results" "$JUNIT/junit-build.xml" \
    || echo "could not write the result file" >&2
[ "$RC" = 0 ] || exit "$RC"
[ "${MEC_CONPAAS_IMAGE_BENCH:-1}" = 0 ] && exit 0
"$MEC_CONPAAS_IMAGE_WORK/venv/bin/pip" install -q matplotlib 2>&1 | grep -v "^WARNING: Location" || true
"$MEC_CONPAAS_IMAGE_WORK/venv/bin/python" "$REPO/bench/image_build.py" --quick \
    --profile "$MEC_CONPAAS_IMAGE_PROFILE" --work-dir "$MEC_CONPAAS_IMAGE_WORK" \
    --out-dir "$MEC_CONPAAS_IMAGE_OUT"
