#!/bin/bash
# README command 1: install everything, bring up the embedded edge cloud
# (ap-1, ap-2, ap-3 and the manager on this machine), deploy the sample web
# service on ap-1 and migrate it to ap-3, printing each step.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
exec .venv/bin/mec-conpaas-edge up --demo "$@"
