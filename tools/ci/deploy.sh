#!/bin/bash
# CI entry point for the deployment layer (issue 3): lint + the functional test that runs
# the Ansible playbooks for real on an LXC test bed (tools/deploy/testbed.sh: a master and
# two AP nodes, Debian 12 system containers with systemd, nested libvirt LXC for
# nova-compute). Run as root on a fresh Debian 12 machine, no stdin:
#     bash tools/ci/deploy.sh
# Installs what it needs (apt packages, a venv with ansible), runs pytest tests/deploy and
# tears down every container, bridge and process the test bed started (also on failure).
# Exit status: pytest's.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${MEC_DEPLOY_VENV:-/opt/mec-deploy-ci/venv}
export MEC_DEPLOY_STATE=${MEC_DEPLOY_STATE:-/var/tmp/mec-deploy-testbed}
export MEC_DEPLOY_LOG_DIR=${MEC_DEPLOY_LOG_DIR:-/var/tmp/mec-deploy-logs}
export DEBIAN_FRONTEND=noninteractive
# full (default, what CI runs): the whole functional test (OpenStack, the PaaS layer,
# remove-node/add-node included); system: common, edge_tuning and
# wifi_ap only (see docs/deploy.rst, "CI vs. the full run")
export MEC_DEPLOY_SCOPE=${MEC_DEPLOY_SCOPE:-full}
T0=$(date +%s)
log() { echo "[deploy-ci +$(( $(date +%s) - T0 ))s] $*"; }

cleanup() {
    local rc=$?
    log "cleanup"
    if [ -n "${MEC_DEPLOY_KEEP:-}" ]; then
        log "MEC_DEPLOY_KEEP set: the test bed stays up (tools/deploy/testbed.sh down removes it)"
    else
        MEC_DEPLOY_DESTROY_BASE=1 bash "$REPO/tools/deploy/testbed.sh" down || true
    fi
    # apt-cacher-ng's postinst may have started the distribution's daemon (a kept test bed
    # still needs it: its containers' apt goes through it)
    if [ -z "${MEC_DEPLOY_KEEP:-}" ] && [ -n "${ACNG_WAS_RUNNING:-}" ] && [ "$ACNG_WAS_RUNNING" = no ] && [ -x /etc/init.d/apt-cacher-ng ]; then
        /etc/init.d/apt-cacher-ng stop >/dev/null 2>&1 || true
    fi
    log "done, exit $rc"
    exit $rc
}
trap cleanup EXIT

ACNG_WAS_RUNNING=no
pidof apt-cacher-ng >/dev/null 2>&1 && ACNG_WAS_RUNNING=yes

log "apt packages"
bash "$REPO/tools/ci/apt-update.sh"
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    lxc lxc-templates debootstrap rsync openssh-client apt-cacher-ng curl ca-certificates \
    bridge-utils iproute2 busybox-static e2fsprogs python3-venv python3-dev gcc pkg-config \
    libvirt-dev >/dev/null

log "python venv (ansible-core, ansible collections bundle, linters, pytest)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -r "$REPO/tools/deploy/requirements.txt"
export PATH="$VENV/bin:$PATH"
ansible --version | sed -n 1p  # sed reads all: head would break the pipe (pipefail)

log "pytest tests/deploy"
cd "$REPO"
set +e
python -m pytest -p no:cacheprovider -v -s "$REPO/tests/deploy" "$@"
rc=$?
set -e
log "pytest exit $rc"
exit $rc
