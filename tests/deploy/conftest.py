"""Run the MEC-ConPaaS playbooks for real against an LXC test bed.

tools/deploy/testbed.sh brings up Debian 12 system containers running systemd (a master
and MEC_DEPLOY_N_AP access points, default 2) on a private bridge; playbooks/site.yml
deploys them over SSH; the tests then check what a sysadmin would check, and a second
run of the same playbook must report changed=0. Everything is torn down at the end
(set MEC_DEPLOY_KEEP=1 to keep the test bed for debugging).

Environment:
  MEC_DEPLOY_N_AP        number of AP containers (default 2)
  MEC_DEPLOY_KEEP        keep the test bed afterwards
  MEC_DEPLOY_REUSE       reuse a running test bed and skip the first deployment
                         (the idempotence check still runs the playbook again)
  MEC_DEPLOY_LOG_DIR     where ansible logs go (default /var/tmp/mec-deploy-logs)
  MEC_DEPLOY_OPENSTACK   1 (default): the PaaS on the openstack driver (nova backend on
                         the APs, keystone tenancy); 0: the lxc driver (libvirt backend)
  MEC_DEPLOY_SCOPE       full (default): everything; system: site.yml --skip-tags
                         openstack,paas (common, edge_tuning, wifi_ap only) and the
                         OpenStack / PaaS checks are skipped
"""
import json
import os
import re
import shlex
import subprocess
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TESTBED = os.path.join(REPO, "tools", "deploy", "testbed.sh")
STATE = os.environ.get("MEC_DEPLOY_STATE", "/var/tmp/mec-deploy-testbed")
LOG_DIR = os.environ.get("MEC_DEPLOY_LOG_DIR", "/var/tmp/mec-deploy-logs")
N_AP = int(os.environ.get("MEC_DEPLOY_N_AP", "2"))
SCOPE = os.environ.get("MEC_DEPLOY_SCOPE", "full")
SCOPE_ARGS = [] if SCOPE == "full" else ["--skip-tags", "openstack,paas"]
full_only = pytest.mark.skipif(SCOPE != "full", reason="MEC_DEPLOY_SCOPE=%s" % SCOPE)
# Whether the master's manager takes keystone tokens ([api] auth_strategy = keystone, the
# roles' default with the openstack driver; shell, true or false).
KEYSTONE_AUTH = "grep -q '^auth_strategy = keystone' /etc/mec-conpaas/mec-conpaas.conf"
# The developer's CLI as installed on the master by mec_conpaas_manager, as admin: the
# cloud admin's keystone credentials (/etc/openstack/clouds.yaml) when the manager uses
# keystone, else the PaaS admin token.
PAAS_CLI = ("MEC_CONPAAS_URL=http://127.0.0.1:9680 /opt/mec-conpaas/venv/bin/mec-conpaas "
            "$(%s && echo --os-cloud mec-admin || echo --token "
            "$(cat /etc/mec-conpaas/admin-token)) " % KEYSTONE_AUTH)
# The header of an admin's request to the manager's API (for curl), the same way.
ADMIN_HEADER = ("$(%s && echo X-Auth-Token: $(OS_CLOUD=mec-admin openstack token issue "
                "-f value -c id) || echo Authorization: Bearer "
                "$(cat /etc/mec-conpaas/admin-token))" % KEYSTONE_AUTH)
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                   r"failed=(\d+)\s+skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)", re.M)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="the deployment tests need root (LXC containers)")
        for item in items:
            if "tests/deploy" in str(item.fspath) and "lint" not in item.name:
                item.add_marker(skip)


def ansible_env():
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = os.path.join(REPO, "ansible.cfg")
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_NOCOLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    # Per-task and per-role wall times in every playbook log (CI's included), so a slow
    # deploy part can be profiled from its logs instead of by a second run.
    env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks,ansible.posix.profile_roles"
    env["PROFILE_TASKS_TASK_OUTPUT_LIMIT"] = "40"
    env["PROFILE_TASKS_SORT_ORDER"] = "descending"
    return env


def run_playbook(playbook, name, *extra):
    """Run a playbook against the test bed; return (recap dict, seconds, log path)."""
    os.makedirs(LOG_DIR, exist_ok=True)
    log = os.path.join(LOG_DIR, "%s.log" % name)
    cmd = ["ansible-playbook", "-i", os.path.join(STATE, "inventory.yml"),
           os.path.join(REPO, "playbooks", playbook)] + list(extra)
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=ansible_env(), stdout=f,
                              stderr=subprocess.STDOUT)
    seconds = time.monotonic() - t0
    with open(log) as f:
        out = f.read()
    recap = {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)),
                          "unreachable": int(m.group(4)), "failed": int(m.group(5))}
             for m in RECAP.finditer(out)}
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-60:])
        pytest.fail("%s failed (rc=%d, %.0f s, log %s):\n%s" % (
            playbook, proc.returncode, seconds, log, tail))
    return recap, seconds, log


class Host:
    """A test-bed container reached over SSH like a sysadmin would."""

    def __init__(self, name, address):
        self.name = name
        self.address = address

    def ssh_base(self):
        return ["ssh", "-i", os.path.join(STATE, "id_ed25519"), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "root@" + self.address]

    def run(self, command, check=True, timeout=600):
        proc = subprocess.run(self.ssh_base() + [command], capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError("%s: %r failed (rc=%d)\nstdout: %s\nstderr: %s" % (
                self.name, command, proc.returncode, proc.stdout[-3000:],
                proc.stderr[-3000:]))
        return proc

    def openstack(self, args, timeout=300):
        out = self.run("OS_CLOUD=mec-admin openstack " + args, timeout=timeout).stdout
        return json.loads(out) if " -f json" in " " + args else out

    def put(self, local, remote):
        subprocess.run(["scp", "-q", "-i", os.path.join(STATE, "id_ed25519"),
                        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "LogLevel=ERROR", local, "root@%s:%s" % (self.address, remote)],
                       check=True, timeout=300)


@pytest.fixture(scope="session")
def testbed():
    reuse = os.environ.get("MEC_DEPLOY_REUSE")
    if not reuse:
        subprocess.run(["bash", TESTBED, "up", str(N_AP)], check=True, timeout=1200)
    try:
        with open(os.path.join(STATE, "inventory.yml")) as f:
            inv = f.read()
        hosts = dict(re.findall(r"^ {8}(\S+):\n {10}ansible_host: (\S+)$", inv, re.M))
        bed = {name: Host(name, addr) for name, addr in hosts.items()}
        yield bed
        save_journals(bed)
    finally:
        if not os.environ.get("MEC_DEPLOY_KEEP"):
            subprocess.run(["bash", TESTBED, "down"], timeout=600)


# What each host's services logged, kept beside the playbook logs when the test bed goes:
# a CI failure in the PaaS (a drain, a migration through nova) is explained by the
# manager's and node agents' logs, which the teardown would otherwise destroy.
JOURNAL_UNITS = ("mec-conpaas-manager", "mec-conpaas-node-agent", "mec-conpaas-haproxy",
                 "nova-api", "nova-conductor", "nova-scheduler", "nova-compute")


def save_journals(bed):
    os.makedirs(LOG_DIR, exist_ok=True)
    units = " ".join("-u %s" % u for u in JOURNAL_UNITS)
    for name, host in sorted(bed.items()):
        try:
            out = host.run("journalctl --no-pager -o short-precise %s" % units,
                           check=False, timeout=120).stdout
        except subprocess.SubprocessError as e:
            out = "journal not read: %s\n" % e
        with open(os.path.join(LOG_DIR, "journal-%s.log" % name), "w") as f:
            f.write(out)


@pytest.fixture(scope="session")
def deployed(testbed):
    """playbooks/site.yml run once on the fresh test bed."""
    result = {"first": None}
    if not os.environ.get("MEC_DEPLOY_REUSE"):
        recap, seconds, log = run_playbook("site.yml", "site-first", *SCOPE_ARGS)
        result["first"] = {"recap": recap, "seconds": seconds, "log": log}
        print("\nsite.yml first run: %.0f s" % seconds)
    return result


@pytest.fixture(scope="session")
def master(testbed, deployed):
    return testbed["master"]


@pytest.fixture(scope="session")
def aps(testbed, deployed):
    return [h for n, h in sorted(testbed.items()) if n.startswith("ap-")]


def shell_quote(s):
    return shlex.quote(s)
