#!/bin/bash
# The full multi-host run, longer than CI's share: a master and three APs; site.yml on
# ap-1 and ap-2, then add-node.yml brings ap-3 in, then remove-node.yml drains and removes
# ap-1; each step checked with the openstack CLI and the PaaS manager's API, and a rerun of
# site.yml on the remaining nodes must report changed=0. Times go to the JSON on the last line.
#     bash tools/deploy/full-run.sh          (as root; MEC_DEPLOY_KEEP=1 keeps the test bed)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${MEC_DEPLOY_STATE:-/var/tmp/mec-deploy-testbed}
LOGS=${MEC_DEPLOY_LOG_DIR:-/var/tmp/mec-deploy-logs}
export ANSIBLE_CONFIG=$REPO/ansible.cfg ANSIBLE_NOCOLOR=1
# per-task and per-role times in every log (as tests/deploy/conftest.py ansible_env)
export ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks,ansible.posix.profile_roles
export PROFILE_TASKS_TASK_OUTPUT_LIMIT=40 PROFILE_TASKS_SORT_ORDER=descending
mkdir -p "$LOGS"
T0=$(date +%s)
declare -A T
log() { echo "[full-run +$(( $(date +%s) - T0 ))s] $*" >&2; }
cleanup() { [ -n "${MEC_DEPLOY_KEEP:-}" ] || bash "$REPO/tools/deploy/testbed.sh" down; }
trap cleanup EXIT
master() {
    ssh -i "$STATE/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@10.231.0.10 "$@"
}
play() {  # name log-name extra-args...
    local name=$1 lname=$2 t; shift 2
    t=$(date +%s)
    if ! ansible-playbook -i "$STATE/inventory.yml" "$REPO/playbooks/$name" "$@" > "$LOGS/full-$lname.log" 2>&1; then
        tail -40 "$LOGS/full-$lname.log" >&2; log "$name failed"; exit 1
    fi
    T[$lname]=$(( $(date +%s) - t ))
    log "$name ($lname) ok in ${T[$lname]} s: $(grep -E '^\S+ +: ok=' "$LOGS/full-$lname.log" | tr -s ' ' | tr '\n' ';')"
}
compute_hosts() {
    master "OS_CLOUD=mec-admin openstack compute service list --service nova-compute -f value -c Host -c State -c Status" | sort
}

t=$(date +%s); bash "$REPO/tools/deploy/testbed.sh" up 3; T[testbed]=$(( $(date +%s) - t ))
play site.yml site -e mec_conpaas_edge_hosts=ap-1:ap-2
compute_hosts
play add-node.yml add-node -e node=ap-3
compute_hosts | grep -q '^ap-3 up enabled$' || { log "ap-3 is not an up compute host"; exit 1; }
master "OS_CLOUD=mec-admin openstack availability zone list --compute -f value -c 'Zone Name'" | grep -qx ap-3
# the PaaS admin's header: a keystone token of the cloud admin where the manager uses keystone
if master grep -q "'^auth_strategy = keystone'" /etc/mec-conpaas/mec-conpaas.conf; then
    header="X-Auth-Token: $(master OS_CLOUD=mec-admin openstack token issue -f value -c id)"
else
    header="Authorization: Bearer $(master cat /etc/mec-conpaas/admin-token)"
fi
for _ in $(seq 30); do
    master "curl -s -H '$header' http://127.0.0.1:9680/v1/nodes" | grep -q '"name": *"ap-3"' && break
    sleep 3
done
master "curl -s -H '$header' http://127.0.0.1:9680/v1/nodes" | grep -q '"name": *"ap-3"' \
    || { log "the manager does not know ap-3"; exit 1; }
play remove-node.yml remove-node -e node=ap-1
if compute_hosts | grep -q '^ap-1 '; then log "ap-1 still a compute host"; exit 1; fi
play site.yml rerun -e mec_conpaas_edge_hosts=ap-2:ap-3
changed=$(grep -E '^\S+ +: ok=' "$LOGS/full-rerun.log" | sed -E 's/.*changed=([0-9]+).*/\1/' | paste -sd+ | bc)
[ "$changed" = 0 ] || { log "rerun changed=$changed"; exit 1; }
log "all steps passed"
printf '{"benchmark": "deploy-full-run", "testbed_s": %s, "site_2ap_s": %s, "add_node_s": %s, "remove_node_s": %s, "rerun_s": %s, "rerun_changed": %s, "total_s": %s}\n' \
    "${T[testbed]}" "${T[site]}" "${T[add-node]}" "${T[remove-node]}" "${T[rerun]}" "$changed" "$(( $(date +%s) - T0 ))"
