#!/usr/bin/env bash
# The largest image that hosts services without OpenStack (profile "node":
# image-builder/profiles.ini) with the same checks as CI, booting only the
# 'good' guest: the pinned-TLS join, the allocation applied, a container serving
# on the allocated instance network, the Wi-Fi path on mac80211_hwsim.  The
# full "edge" profile (nova-compute, cinder-volume) is tools/image/build-full.sh,
# which this runs with the node profile's defaults (no bench/image_build.py run).
# Work dir image-builder/build-cache/node (its package layer makes a rebuild
# start after the apt installs); artifacts in its artifacts/ directory.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export MEC_CONPAAS_IMAGE_PROFILE="${MEC_CONPAAS_IMAGE_PROFILE:-node}"
export MEC_CONPAAS_IMAGE_BOOT="${MEC_CONPAAS_IMAGE_BOOT:-good}"
export MEC_CONPAAS_IMAGE_WORK="${MEC_CONPAAS_IMAGE_WORK:-$REPO/image-builder/build-cache/node}"
export MEC_CONPAAS_IMAGE_BENCH="${MEC_CONPAAS_IMAGE_BENCH:-0}"
exec bash "$REPO/tools/image/build-full.sh"
