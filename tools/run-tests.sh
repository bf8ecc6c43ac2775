#!/bin/bash
# README command 2: the whole test suite (what .ci/run calls).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
.venv/bin/ruff check mec_conpaas tests bench tools
.venv/bin/pytest -p no:cacheprovider -v tests/unit tests/functional "$@"
