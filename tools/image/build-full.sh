#!/usr/bin/env bash
# The full researcher image (profile "edge": all roles, xz -1) with the same
# checks as CI: image-spec test and all emulated boots.  Output in
# image-builder/out/.  Too long for CI together with the rest of the suite
# when caches are cold; see image-builder/README.rst, "Measurements".
# Then runs bench/image_build.py --quick on the result (JSON + PNG in bench/results/).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export MEC_CONPAAS_IMAGE_PROFILE="${MEC_CONPAAS_IMAGE_PROFILE:-edge}"
export MEC_CONPAAS_IMAGE_WORK="${MEC_CONPAAS_IMAGE_WORK:-$REPO/image-builder/build-cache}"
export MEC_CONPAAS_IMAGE_OUT="${MEC_CONPAAS_IMAGE_OUT:-$REPO/image-builder/out}"
T0=$(date +%s)
bash "$REPO/tools/ci/image.sh"
echo "tools/image/build-full.sh: build + tests took $(( $(date +%s) - T0 )) s"
"$MEC_CONPAAS_IMAGE_WORK/venv/bin/pip" install -q matplotlib 2>&1 | grep -v "^WARNING: Location" || true
"$MEC_CONPAAS_IMAGE_WORK/venv/bin/python" "$REPO/bench/image_build.py" --quick \
    --profile "$MEC_CONPAAS_IMAGE_PROFILE" --work-dir "$MEC_CONPAAS_IMAGE_WORK" \
    --out-dir "$MEC_CONPAAS_IMAGE_OUT"
