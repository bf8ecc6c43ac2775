#!/usr/bin/env python3
"""Benchmark of the deployment layer (issue 3), on the LXC test bed of tools/deploy/.

Measures, on this machine:
  * time from bare Debian 12 hosts (fresh system containers: tools/deploy/testbed.sh up)
    to a first ACTIVE LXC instance through the playbooks: site.yml's first run, then a
    raw image upload and `openstack server create --wait` on an AP's availability zone;
  * its floor, in the same run: playbooks/packages.yml alone first (downloading and
    installing every node's packages, nothing configured), which any deployment of the
    same services pays; site.yml then configures (its package tasks find everything
    installed). ratio_to_package_floor = bare host to ACTIVE / packages phase;
  * the second (idempotent) run of site.yml;
  * RAM used on the master and on an edge node after deployment, from each container's
    memory cgroup: anonymous + shared memory (what `free` reports as used, without page
    cache), and the resident size of the edge node's OpenStack processes and every
    process's proportional set size (privsep helpers by context). The peer figure
    for the edge node is the K3s agent's 268 MB on a Pi 4 (seed paper; not measured here).

    bench/deploy.py [--quick] [--reuse] [--n-ap N] [--keep] [--scope full|system]

--quick  one AP node instead of two and no second run
--reuse  measure an already deployed test bed (no deployment: RAM + server create only)
--keep   leave the test bed running
--scope system   deploy with --skip-tags openstack,paas (common, edge_tuning, wifi_ap): no
         instance is created, bare_to_active_s is null; RAM is then the base system's

Writes bench/results/deploy-<UTC time>.json and .png; prints the summary as ONE JSON object
on its last line. Targets (issue 3): first ACTIVE instance <= 12 min on 2 cores; edge node
<= 600 MB including the OpenStack services. Needs root.
"""
import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
TESTBED = os.path.join(REPO, "tools", "deploy", "testbed.sh")
STATE = os.environ.get("MEC_DEPLOY_STATE", "/var/tmp/mec-deploy-testbed")
PREFIX = os.environ.get("MEC_DEPLOY_PREFIX", "mecci")
TARGET_ACTIVE_S = 12 * 60
TARGET_EDGE_MB = 600
PEER_K3S_AGENT_MB = 268  # K3s agent alone on a Pi 4 (seed paper figure, not measured here)
MB = 1024 * 1024
EDGE_PROCS = ("nova-compute", "neutron-linuxbridge-agent", "cinder-volume", "libvirtd",
              "privsep-helper", "mec-conpaas-node-agent", "haproxy")


def log(msg):
    print("[bench-deploy %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def ssh(addr, command, timeout=900):
    return subprocess.run(
        ["ssh", "-i", os.path.join(STATE, "id_ed25519"), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "root@" + addr, command],
        capture_output=True, text=True, timeout=timeout, check=True).stdout


def profile_summary():
    """tools/deploy/profile_summary.py (a script, not a package): reads the per-task and
    per-role times profile_tasks/profile_roles write at the end of a playbook's log."""
    sys.path.insert(0, os.path.join(REPO, "tools", "deploy"))
    try:
        import profile_summary as mod
    finally:
        sys.path.pop(0)
    return mod


# Where each playbook's time went, from its log: {log name: profile_summary.parse(...)}.
PROFILES = {}


def playbook(name, log_name, extra=()):
    # per-task and per-role times in the log (as tests/deploy/conftest.py ansible_env)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks,"
                                         "ansible.posix.profile_roles",
               PROFILE_TASKS_TASK_OUTPUT_LIMIT="40", PROFILE_TASKS_SORT_ORDER="descending")
    os.makedirs("/var/tmp/mec-deploy-logs", exist_ok=True)
    path = "/var/tmp/mec-deploy-logs/bench-%s.log" % log_name
    t0 = time.monotonic()
    with open(path, "w") as f:
        cmd = ["ansible-playbook", "-i", os.path.join(STATE, "inventory.yml"),
               os.path.join(REPO, "playbooks", name)] + list(extra)
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f,
                            stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - t0
    with open(path) as f:
        out = f.read()
    changed = {m.group(1): int(m.group(2)) for m in
               re.finditer(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", out, re.M)}
    if rc != 0:
        sys.exit("%s failed, see %s" % (name, path))
    summary = profile_summary().parse(path, top=10)
    PROFILES[log_name] = {k: summary[k] for k in ("wall_s", "top_tasks_s", "task_names",
                                                   "roles_s")}
    return seconds, changed


def hosts():
    with open(os.path.join(STATE, "inventory.yml")) as f:
        return dict(re.findall(r"^ {8}(\S+):\n {10}ansible_host: (\S+)$", f.read(), re.M))


def cgroup_memory(container):
    """Memory of a container from its v1 memory cgroup (bytes)."""
    base = "/sys/fs/cgroup/memory/lxc.payload.%s" % container
    stat = {}
    with open(os.path.join(base, "memory.stat")) as f:
        for line in f:
            k, v = line.split()
            stat[k] = int(v)
    with open(os.path.join(base, "memory.usage_in_bytes")) as f:
        usage = int(f.read())
    return {"used_mb": round((stat["total_rss"] + stat["total_shmem"]) / MB, 1),
            "rss_mb": round(stat["total_rss"] / MB, 1),
            "usage_with_cache_mb": round(usage / MB, 1)}


def edge_process_rss(addr):
    out = ssh(addr, "ps -eo rss=,args=")
    per = {}
    for line in out.splitlines():
        rss, args = line.strip().split(None, 1)
        for name in EDGE_PROCS:
            if name in args:
                per[name] = per.get(name, 0) + int(rss) / 1024
                break
    return {k: round(v, 1) for k, v in sorted(per.items())}


# Proportional set size (shared pages split among the processes sharing them, so the
# figures add up) of every process, read on the node, and its anonymous part (Pss_Anon,
# Linux 5.9+; null before): what the cgroup's used figure counts, without the pages of
# files (code, libraries) the kernel can drop and read again.
PSS_PROBE = r"""
import json, os
out = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            args = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open("/proc/%s/smaps_rollup" % pid) as f:
            kb = {line.split(":")[0]: int(line.split()[1]) for line in f if line[0].isupper()}
    except OSError:
        continue
    if args and "Pss" in kb:
        out.append([kb["Pss"], kb.get("Pss_Anon"), args])
print(json.dumps(out))
"""


def process_label(args):
    """What a process is: one of EDGE_PROCS, a privsep helper by its context (each
    OpenStack service starts its own, one per context it uses), or "other"."""
    if "privsep-helper" in args:
        context = re.search(r"--privsep_context[ =](\S+)", args)
        return "privsep-helper " + (context.group(1) if context else "?")
    return next((name for name in EDGE_PROCS if name in args), "other")


def edge_process_pss(addr):
    """{label: [PSS MB, processes]} on a node, {label: anonymous PSS MB} (None where the
    kernel does not tell it) and the totals of every process."""
    rows = json.loads(ssh(addr, "python3 -c %s" % shlex.quote(PSS_PROBE)))
    per, anon = {}, {}
    for kb, anon_kb, args in rows:
        label = process_label(args)
        entry = per.setdefault(label, [0.0, 0])
        entry[0] += kb / 1024
        entry[1] += 1
        anon[label] = (None if anon_kb is None or anon.get(label, 0) is None
                       else anon.get(label, 0) + anon_kb / 1024)
    known = all(a is not None for _, a, _ in rows)
    return ({k: [round(v[0], 1), v[1]] for k, v in sorted(per.items())},
            {k: (round(v, 1) if v is not None else None) for k, v in sorted(anon.items())},
            round(sum(kb for kb, _, _ in rows) / 1024, 1),
            round(sum(a for _, a, _ in rows) / 1024, 1) if known else None)


def server_active(master_addr, ap_name):
    tmp = tempfile.mkdtemp(prefix="mec-bench-image-")
    root = os.path.join(tmp, "root")
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "run"):
        os.makedirs(os.path.join(root, d))
    shutil.copy(shutil.which("busybox") or "/bin/busybox", os.path.join(root, "bin", "busybox"))
    for applet in ("sh", "sleep"):
        os.symlink("busybox", os.path.join(root, "bin", applet))
    with open(os.path.join(root, "sbin", "init"), "w") as f:
        f.write("#!/bin/sh\nexec /bin/sleep 1000000\n")
    os.chmod(os.path.join(root, "sbin", "init"), 0o755)
    image = os.path.join(tmp, "busybox.raw")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", root, image, "16M"], check=True)
    subprocess.run(["scp", "-q", "-i", os.path.join(STATE, "id_ed25519"), "-o",
                    "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-o", "LogLevel=ERROR", image, "root@%s:/tmp/bench.raw" % master_addr],
                   check=True)
    shutil.rmtree(tmp)
    t0 = time.monotonic()
    os_ = "OS_CLOUD=mec-admin openstack "
    if "mec-bench" not in ssh(master_addr, os_ + "image list -f value -c Name"):
        ssh(master_addr, os_ + "image create --disk-format raw --container-format bare "
                               "--public --file /tmp/bench.raw mec-bench >/dev/null")
    t_image = time.monotonic() - t0
    name = "mec-bench-%d" % int(time.time())
    t1 = time.monotonic()
    out = json.loads(ssh(master_addr, os_ + "server create --image mec-bench --flavor m1.nano "
                         "--network provider --availability-zone %s --wait -f json %s"
                         % (ap_name, name)))
    t_server = time.monotonic() - t1
    ssh(master_addr, os_ + "server delete --wait " + name)
    if out.get("status") != "ACTIVE":
        sys.exit("server not ACTIVE: %s" % out.get("status"))
    return t_image, t_server


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    phases = [(k, v) for k, v in result["phases_s"].items() if v is not None]
    a.barh([k for k, _ in phases], [v / 60 for _, v in phases], color="tab:blue")
    if result["bare_to_active_s"] is not None:
        a.axvline(TARGET_ACTIVE_S / 60, color="red", ls="--", label="target 12 min (to ACTIVE)")
        a.axvline(result["bare_to_active_s"] / 60, color="green", ls=":",
                  label="bare host to ACTIVE %.1f min" % (result["bare_to_active_s"] / 60))
    a.set_xlabel("minutes")
    a.set_title("Deployment phases, scope %s (%s)" % (result["scope"], result["machine"]),
                fontsize=9)
    if result["bare_to_active_s"] is not None:
        a.legend(fontsize=8)
    names = list(result["memory"])
    b.bar(names, [result["memory"][n]["used_mb"] for n in names], color="tab:orange")
    b.axhline(TARGET_EDGE_MB, color="red", ls="--", label="edge target 600 MB")
    b.axhline(PEER_K3S_AGENT_MB, color="grey", ls=":", label="K3s agent alone (paper)")
    b.set_ylabel("MB used (anon + shmem, cgroup)")
    b.set_title("RAM after deployment")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--n-ap", type=int, default=None)
    ap.add_argument("--scope", choices=("full", "system"), default="full")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (LXC containers)")
    n_ap = args.n_ap or (1 if args.quick else 2)
    phases = {"testbed_up": None, "packages_floor": None, "site_first_run": None,
              "image_upload": None,
              "server_create_to_active": None, "site_second_run": None}
    second_changed = None
    extra = [] if args.scope == "full" else ["--skip-tags", "openstack,paas"]
    memory, edge_procs, edge_pss, edge_pss_total = {}, {}, {}, None
    edge_anon, edge_anon_total = {}, None
    try:
        if not args.reuse:
            subprocess.run(["bash", TESTBED, "down"], check=True)
            t0 = time.monotonic()
            subprocess.run(["bash", TESTBED, "up", str(n_ap)], check=True)
            phases["testbed_up"] = time.monotonic() - t0
            log("test bed up in %.0f s" % phases["testbed_up"])
            phases["packages_floor"], _ = playbook("packages.yml", "packages", extra)
            log("packages (floor) %.0f s" % phases["packages_floor"])
            phases["site_first_run"], _ = playbook("site.yml", "site-first", extra)
            log("site.yml first run %.0f s" % phases["site_first_run"])
        h = hosts()
        aps = sorted(n for n in h if n.startswith("ap-"))
        if args.scope == "full":
            upload, active = server_active(h["master"], aps[0])
            phases["image_upload"], phases["server_create_to_active"] = upload, active
            log("server ACTIVE on %s after %.1f s" % (aps[0], phases["server_create_to_active"]))
        memory = {"master": cgroup_memory("%s-master" % PREFIX)}
        for name in aps:
            memory[name] = cgroup_memory("%s-%s" % (PREFIX, name))
        edge_procs = edge_process_rss(h[aps[0]])
        edge_pss, edge_anon, edge_pss_total, edge_anon_total = edge_process_pss(h[aps[0]])
        if not args.quick and not args.reuse:
            phases["site_second_run"], second_changed = playbook("site.yml", "site-second", extra)
            log("site.yml second run %.0f s, changed=%s" % (phases["site_second_run"],
                                                            second_changed))
    finally:
        if not args.keep and not args.reuse:
            subprocess.run(["bash", TESTBED, "down"])
    to_active = None
    if phases["site_first_run"] is not None and phases["server_create_to_active"] is not None:
        to_active = (phases["testbed_up"] + phases["packages_floor"] + phases["site_first_run"]
                     + phases["image_upload"] + phases["server_create_to_active"])
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    result = {
        "benchmark": "deploy",
        "utc": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": "%d cores, load %s at the end" % (os.cpu_count(), "/".join(load)),
        "n_ap": n_ap, "quick": args.quick, "reuse": args.reuse, "scope": args.scope,
        "phases_s": {k: (round(v, 1) if v is not None else None) for k, v in phases.items()},
        "bare_to_active_s": round(to_active, 1) if to_active is not None else None,
        "target_bare_to_active_s": TARGET_ACTIVE_S,
        "ratio_to_package_floor": (round(to_active / phases["packages_floor"], 2)
                                   if to_active and phases["packages_floor"] else None),
        "peer_k3s_agent_mb": PEER_K3S_AGENT_MB,
        "memory": memory,
        "edge_openstack_process_rss_mb": edge_procs,
        "edge_process_pss_mb_and_count": edge_pss,
        "edge_pss_total_mb": edge_pss_total,
        # the privsep daemons' PSS by context, named without dots or spaces (citable keys)
        "edge_privsep_pss_mb": {
            label.split(" ", 1)[1].replace(".", "-"): pss for label, (pss, _) in
            edge_pss.items() if label.startswith("privsep-helper ")},
        "edge_process_pss_anon_mb": edge_anon,
        "edge_pss_anon_total_mb": edge_anon_total,
        "edge_used_mb": memory[aps[0]]["used_mb"],
        "target_edge_mb": TARGET_EDGE_MB,
        "master_used_mb": memory["master"]["used_mb"],
        "second_run_changed": second_changed,
        # slowest tasks and every role's time per playbook run (profile_tasks/profile_roles)
        "profile": PROFILES,
    }
    os.makedirs(RESULTS, exist_ok=True)
    stamp = result["utc"].replace(":", "").replace("-", "")
    base = os.path.join(RESULTS, "deploy-%s%s" % ("" if args.scope == "full" else "system-", stamp))
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=2)
    plot(result, base + ".png")
    result["files"] = [base + ".json", base + ".png"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
