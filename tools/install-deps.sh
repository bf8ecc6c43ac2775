#!/bin/bash
# Install what the PaaS layer and its embedded edge need on Debian 12, and
# a virtualenv (.venv) with this package.  Idempotent; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "run as root (sudo $0): it installs Debian packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
PKGS=(libvirt-daemon libvirt-daemon-driver-lxc libvirt-clients libvirt-dev pkg-config
      gcc python3-dev haproxy debootstrap iproute2 iptables iputils-ping
      libnetfilter-queue-dev libnfnetlink-dev util-linux procps ca-certificates
      libcap2-bin nftables python3-venv
      chromium chromium-driver prometheus hostapd wpasupplicant)
# chromium + chromium-driver: the dashboard's browser test (selenium drives
# Debian's browser; nothing is downloaded at test time); prometheus:
# mec-conpaas-edge up --with-prometheus and its test; hostapd + wpasupplicant:
# the station follower's test against a real hostapd (wired 802.1X, no radio).
if [ "${1:-}" = "--bench" ]; then
    # The peers bench/migrate.py and bench/provision.py measure beside us
    # (--peer podman,lxc); CI's tests do not need them.
    PKGS+=(podman criu crun runc lxc)
fi
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    bash tools/ci/apt-update.sh
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip setuptools wheel
.venv/bin/pip install -q -e '.[edge,bench,test]'
# A real keystone for the keystone tests (tests/unit/test_keystone.py runs
# it with tools/keystone-local.py): PyPI's, in its own virtualenv, since its
# oslo.* and SQLAlchemy pins are its own.
if [ ! -x .venv-keystone/bin/keystone-manage ]; then
    rm -rf .venv-keystone
    "$PYTHON" -m venv .venv-keystone
    .venv-keystone/bin/pip install -q --upgrade pip
    .venv-keystone/bin/pip install -q 'keystone>=26.0.0' 2>&1 | { grep -v "^WARNING: Location" || true; }
fi
# MEC_FLINK=1 (tools/flink-tests.sh, bench/stream.py): the flink service
# type's no-PaaS baseline and frame maker run on the host with PyPI's Flink
# and OpenCV (~2.5 min to install): its numpy and apache-beam pins are its
# own, so in .venv-flink (the flink image variant gets the same list: the
# setup.cfg extra "flink").  A Java runtime runs Flink.  CI does not.
if [ "${MEC_FLINK:-0}" = 1 ] && [ ! -x .venv-flink/bin/pyflink-shell.sh ]; then
    dpkg-query -W -f='${Status}' openjdk-17-jre-headless 2>/dev/null | grep -q "install ok installed" \
        || { bash tools/ci/apt-update.sh; apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends openjdk-17-jre-headless; }
    rm -rf .venv-flink
    "$PYTHON" -m venv .venv-flink
    .venv-flink/bin/pip install -q --upgrade pip
    .venv-flink/bin/pip install -q $(.venv/bin/python -m mec_conpaas.edge.flink_image --requirements) \
        2>&1 | { grep -v "^WARNING: Location" || true; }
fi
echo "installed: $(.venv/bin/python --version), $(haproxy -v | sed -n 1p | cut -d' ' -f1-3), libvirt $(libvirtd --version | awk '{print $NF}'), keystone $(.venv-keystone/bin/pip show keystone 2>/dev/null | sed -n 's/^Version: //p')"
