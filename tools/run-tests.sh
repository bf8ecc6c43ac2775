#!/bin/bash
# README command 2: the whole test suite, as .ci/run calls it.
#
#   tools/run-tests.sh            every part
#   tools/run-tests.sh paas       PaaS layer: lint, unit and functional tests on a
#                                 real embedded edge (tests/unit, tests/functional)
#   tools/run-tests.sh deploy     Ansible roles and playbooks on an LXC test bed
#                                 (tools/ci/deploy.sh, tests/deploy)
#   tools/run-tests.sh image      SD-card image build, image-spec test and emulated
#                                 boot (tools/ci/image.sh, tests/image)
#
# Each part installs what it needs (run as root on Debian 12) and cleans up
# what it started.  Every part runs even if an earlier one failed; the exit
# status is non-zero if any failed.  Each part's wall time, exit status and
# pytest counts go to bench/results/ci-PART-UTC.json (tools/ci/result.py;
# MEC_CI_RESULTS=DIR elsewhere), which the docs cite.
set -uo pipefail
cd "$(dirname "$0")/.."
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(paas deploy image)

paas() {
    tools/install-deps.sh || return 1
    .venv/bin/ruff check mec_conpaas tests bench tools image-builder || return 1
    .venv/bin/pytest -p no:cacheprovider -v --junitxml="$JUNIT/paas-venv.xml" \
        tests/unit tests/functional || return 1
    # Deployed nodes and images run Debian 12's own Python (3.11.2), which may be
    # older than the one .venv was made with: the unit tests again on it (a
    # 3.11.4 API once broke every create on deployed nodes).
    [ -x .venv-debian/bin/python ] || /usr/bin/python3 -m venv .venv-debian || return 1
    .venv-debian/bin/pip install -q -e '.[test]' 2>&1 | { grep -v "^WARNING: Location" || true; }
    .venv-debian/bin/pytest -p no:cacheprovider -q --junitxml="$JUNIT/paas-debian.xml" tests/unit
}

summary=()
status=0
results=${MEC_CI_RESULTS:-bench/results}
JUNIT=$(mktemp -d)
trap 'rm -rf "$JUNIT"' EXIT
for part in "${parts[@]}"; do
    start=$(date +%s)
    load=$(cat /proc/loadavg)
    echo "=== part '$part' ==="
    case "$part" in
        paas) paas ;;
        deploy) PYTEST_ADDOPTS="--junitxml=$JUNIT/deploy.xml" bash tools/ci/deploy.sh ;;
        image) PYTEST_ADDOPTS="--junitxml=$JUNIT/image.xml" bash tools/ci/image.sh ;;
        *) echo "unknown part '$part': use paas, deploy or image" >&2; false ;;
    esac
    rc=$?
    [ $rc -ne 0 ] && status=1
    case "$part" in
        paas) xml=("$JUNIT/paas-venv.xml" "$JUNIT/paas-debian.xml") ;;
        *) xml=("$JUNIT/$part.xml") ;;
    esac
    python3 tools/ci/result.py "$part" "$rc" "$start" "$(date +%s)" "$load" "$results" \
        "${xml[@]}" || echo "could not write the result file of part '$part'" >&2
    summary+=("$part: $([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)") in $(( $(date +%s) - start )) s")
done
echo "=== summary ==="
printf '  %s\n' "${summary[@]}"
exit $status
