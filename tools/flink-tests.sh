#!/bin/bash
# The flink service type's functional test, which CI skips (the flink image
# variant takes ~4 min to build once and .venv-flink ~2.5 min to install;
# the test itself several minutes of JVM starts): installs both if missing, then runs
# tests/functional/test_flink.py under the functional-test lock.
set -euo pipefail
cd "$(dirname "$0")/.."
MEC_FLINK=1 tools/install-deps.sh
.venv/bin/mec-conpaas-edge build-image --flink
exec tools/with-edge-slot .venv/bin/pytest -p no:cacheprovider -x \
    --durations=5 tests/functional/test_flink.py "$@"
