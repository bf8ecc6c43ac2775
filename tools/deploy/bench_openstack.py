"""Provisioning and migration through the openstack driver on a kept deploy test bed
(issue 9's benchmarks; tools/deploy/testbed.sh, deployed with the roles' defaults, e.g.
by `MEC_DEPLOY_KEEP=1 tools/run-tests.sh deploy`). Run as root on the test host:

    .venv/bin/python tools/deploy/bench_openstack.py [--rounds 5]

provision: `service create web` through the PaaS CLI on the master until the first HTTP
200 through ap-1's endpoint; in the same run, interleaved so both see the same load, the
floor: `openstack server create --wait` of the same glance image and flavor in ap-1's
zone, then the same app started in it with nothing of the PaaS
(tools/deploy/floor_app_start.py on ap-1: the port's address, the sample web bundle and
the image init's instance.json) until its first HTTP 200 from ap-1: medians and their
ratio (target <= 1.3). migrate: the open-loop client (mec_conpaas.edge.loadgen, one
request started every 10 ms whatever the earlier ones do) on the master against ap-1's
endpoint while the service migrates to ap-2 and back: failed requests (target 0),
longest gap between answers (target <= 100 ms).

Writes bench/results/provision-openstack-<UTC>.json/.png and
migrate-openstack-<UTC>.json/.png. The machine is shared with other work: it waits (at
most --wait-quiet s) for the 1-min load to drop below 3 and records the load at the start
and end.
"""
import argparse
import datetime
import ipaddress
import json
import os
import re
import statistics
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, REPO)
from bench import common  # noqa: E402
from mec_conpaas.edge import loadgen  # noqa: E402
from mec_conpaas.manager import service as manager_service  # noqa: E402
from tests.deploy import conftest  # noqa: E402  (the test bed's Host, over SSH)
from tests.deploy.conftest import ADMIN_HEADER  # noqa: E402
from tests.deploy.conftest import PAAS_CLI  # noqa: E402

# The node software's venv on the master and the APs (roles/mec_conpaas_package).
PYTHON = "/opt/mec-conpaas/venv/bin/python"
FLOOR_SCRIPT = os.path.join(REPO, "tools", "deploy", "floor_app_start.py")
MACHINE = ("2-core x86-64 shared with other helpers' builds and tests; test bed = Debian 12 "
           "LXC system containers (master + 2 APs), nested nova LXC")


def hosts():
    with open(os.path.join(conftest.STATE, "inventory.yml")) as f:
        inv = f.read()
    found = dict(re.findall(r"^ {8}(\S+):\n {10}ansible_host: (\S+)$", inv, re.M))
    return {name: conftest.Host(name, addr) for name, addr in found.items()}


def paas(master, args, timeout=900):
    return master.run(PAAS_CLI + args, timeout=timeout).stdout


def first_200(host, address, port, deadline=180):
    """Poll from ``host`` every 50 ms until ``address:port`` answers 200."""
    out = host.run(
        "while [ \"$(curl -s -m 2 -o /dev/null -w '%%{http_code}' "
        "http://%s:%d/)\" != 200 ]; do sleep 0.05; done; echo ok" % (address, port),
        timeout=deadline)
    return out.stdout.strip() == "ok"


def paas_round(master, ap, n):
    name = "bench-os-%d" % n
    t0 = time.monotonic()
    paas(master, "service create web %s --node %s -f json" % (name, ap.name))
    port = json.loads(paas(master, "service show %s -f json" % name))["port"]
    assert first_200(master, ap.address, port), name
    seconds = time.monotonic() - t0
    paas(master, "service delete %s" % name)
    return seconds


def server_address(server):
    """The server's one address from ``server create -f json`` (a dict of lists, or
    "net=addr" text, depending on the client's version)."""
    addresses = server["addresses"]
    if isinstance(addresses, dict):
        return next(a for addrs in addresses.values() for a in addrs)
    return re.search(r"=\s*([0-9.]+)", addresses).group(1)


def floor_round(master, ap, image, flavor, prefixlen, n):
    """Returns (total, server create --wait, app start to first 200) in seconds."""
    name = "bench-floor-%d" % n
    t0 = time.monotonic()
    server = master.openstack("server create --image %s --flavor %s --network provider "
                              "--availability-zone %s --wait %s -f json" % (
                                  image, flavor, ap.name, name), timeout=600)
    t_active = time.monotonic()
    try:
        address = server_address(server)
        out = ap.run("%s /var/tmp/mec-floor-app-start.py %s %s %d "
                     "/var/tmp/mec-floor-bundle.tar.gz" % (
                         PYTHON, server["id"], address, prefixlen), timeout=120).stdout
        port = json.loads(out.strip().splitlines()[-1])["app_port"]
        assert first_200(ap, address, port), name
        t_end = time.monotonic()
    finally:
        master.openstack("server delete --wait %s" % name, timeout=600)
    return t_end - t0, t_active - t0, t_end - t_active


def migrate_run(master, aps, name="bench-os-mig"):
    """Two migrations (ap-1 -> ap-2 -> ap-1) under the open-loop client on the master,
    which sends to ap-1's endpoint throughout; one loadgen run per migration."""
    first, last = aps[0], aps[-1]
    master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)
    paas(master, "service create web %s --node %s -f json" % (name, first.name))
    port = json.loads(paas(master, "service show %s -f json" % name))["port"]
    assert first_200(master, first.address, port), name
    runs, timelines = [], []
    try:
        for target in (last, first):
            master.run("rm -f /tmp/mec-bench.stop /tmp/mec-bench.ready /tmp/mec-bench.json")
            master.run("nohup %s -m mec_conpaas.edge.loadgen --url http://%s:%d/ "
                       "--interval 0.01 --stop-file /tmp/mec-bench.stop --ready-file "
                       "/tmp/mec-bench.ready --out /tmp/mec-bench.json --max-seconds 600 "
                       "> /tmp/mec-bench.log 2>&1 &" % (PYTHON, first.address, port))
            master.run("for i in $(seq 300); do [ -e /tmp/mec-bench.ready ] && exit 0; "
                       "sleep 0.1; done; cat /tmp/mec-bench.log; exit 1", timeout=60)
            time.sleep(2)
            t0 = time.monotonic()
            op_id = json.loads(paas(master, "service migrate %s --to %s -f json" % (
                name, target.name)))["operation"]
            seconds = time.monotonic() - t0
            windows = operation_windows(master, op_id)
            time.sleep(2)
            master.run("touch /tmp/mec-bench.stop")
            master.run("for i in $(seq 300); do [ -s /tmp/mec-bench.json ] && exit 0; "
                       "sleep 0.1; done; cat /tmp/mec-bench.log; exit 1", timeout=60)
            results = json.loads(master.run("cat /tmp/mec-bench.json").stdout)
            summary = loadgen.summarize(results)
            # The client and the manager both run on the master, a container of this
            # machine's kernel: one CLOCK_MONOTONIC, so the manager's window marks line
            # up with the client's requests (bench/migrate.py's "seen").
            windows = [dict(w, seen=s) for w, s in zip(
                windows, lxc_bench().around(windows, results))]
            runs.append(dict(summary, to=target.name, migrate_s=round(seconds, 2),
                             windows=windows))
            t_first = min(r["start"] for r in results)
            timelines.append((target.name, [(r["start"] - t_first, r["end"] - r["start"],
                                             r["ok"]) for r in results]))
            print("migrate to %s: %.1f s, %s; window %s" % (target.name, seconds, {
                k: summary[k] for k in ("requests", "failed", "max_gap_ms", "p99_ms")},
                json.dumps(windows)), flush=True)
    finally:
        master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)
    return runs, timelines


def operation_windows(master, op_id):
    """The migration's critical windows as the manager timed them (every step from the
    freeze to the proxies' switch, the kill and the destroy; manager/workflows.py)."""
    out = master.run("curl -sf -H \"%s\" http://127.0.0.1:9680/v1/operations/%s" % (
        ADMIN_HEADER, op_id)).stdout
    return json.loads(out)["operation"]["windows"]


def lxc_bench():
    """bench/migrate.py (its ``around``: what the client saw of each window)."""
    from bench import migrate
    return migrate


def stamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--wait-quiet", type=float, default=600,
                   help="seconds to wait at most for the 1-min load to drop below 3")
    p.add_argument("--skip-provision", action="store_true")
    p.add_argument("--skip-migrate", action="store_true")
    args = p.parse_args()
    bed = hosts()
    master = bed["master"]
    aps = [h for n, h in sorted(bed.items()) if n.startswith("ap-")]
    ap = aps[0]
    quiet = common.wait_quiet(max_wait=args.wait_quiet)
    print("load at start: %s" % quiet, flush=True)
    commit = os.popen("git -C %s rev-parse --short HEAD" % REPO).read().strip()
    base = {"machine": MACHINE, "host": common.machine(), "shared": True, "commit": commit,
            **quiet}
    if not args.skip_provision:
        ap.put(FLOOR_SCRIPT, "/var/tmp/mec-floor-app-start.py")
        with tempfile.NamedTemporaryFile(suffix=".tar.gz") as f:
            f.write(manager_service.build_sample_bundle())
            f.flush()
            ap.put(f.name, "/var/tmp/mec-floor-bundle.tar.gz")
        # Warm: the base image in glance and nova's _base cache on ap-1, the flavor made.
        warm = paas_round(master, ap, 0)
        print("warm-up round: paas %.1f s" % warm, flush=True)
        image = next(i["Name"] for i in master.openstack("image list -f json")
                     if i["Name"].startswith("mec-conpaas-base-"))
        flavor = next(f["Name"] for f in master.openstack("flavor list -f json")
                      if f["Name"].startswith("mec-"))
        subnet = master.openstack("subnet list --network provider -f json")[0]["Subnet"]
        prefixlen = ipaddress.ip_network(subnet).prefixlen
        paas_s, floor = [], []
        for n in range(1, args.rounds + 1):
            paas_s.append(paas_round(master, ap, n))
            floor.append(floor_round(master, ap, image, flavor, prefixlen, n))
            print("round %d: paas %.1f s, floor %.1f s (ACTIVE %.1f s + app %.1f s)" % (
                n, paas_s[-1], *floor[-1]), flush=True)
        floor_s = [f[0] for f in floor]
        ratio = statistics.median(paas_s) / statistics.median(floor_s)
        result = dict(base, benchmark="provision-openstack", rounds=args.rounds,
                      node=ap.name, image=image, flavor=flavor,
                      warmup_paas_s=round(warm, 2),
                      paas_create_to_200_s=[round(x, 2) for x in paas_s],
                      floor_create_to_200_s=[round(x, 2) for x in floor_s],
                      floor_server_active_s=[round(f[1], 2) for f in floor],
                      floor_app_start_s=[round(f[2], 2) for f in floor],
                      paas_median_s=round(statistics.median(paas_s), 2),
                      floor_median_s=round(statistics.median(floor_s), 2),
                      ratio=round(ratio, 2), target_ratio=1.3,
                      meets_target=ratio <= 1.3, loadavg_at_end=common.loadavg(),
                      floor="openstack server create --wait (to ACTIVE) of the same image "
                            "and flavor in the same zone, then the same sample web app "
                            "started in it without the PaaS (tools/deploy/"
                            "floor_app_start.py) until its first 200 from the AP; "
                            "interleaved with the PaaS rounds")
        name = "provision-openstack-%s" % stamp()

        def plot(axis):
            xs = range(1, args.rounds + 1)
            axis.plot(xs, paas_s, "o-", label="PaaS: service create -> first 200")
            axis.plot(xs, floor_s, "s-", label="floor: server create --wait + app start")
            axis.plot(xs, [f[1] for f in floor], "x--", label="floor: to ACTIVE only")
            axis.set_xlabel("round")
            axis.set_ylabel("seconds")
            axis.set_ylim(bottom=0)
            axis.set_title("openstack driver: create to first HTTP 200 (ratio %.2f)" % ratio)
            axis.legend(fontsize=8)
        common.write(name, result, plot)
    if not args.skip_migrate:
        runs, timelines = migrate_run(master, aps)
        result = dict(base, benchmark="migrate-openstack",
                      client="mec_conpaas.edge.loadgen open loop on the master: one GET "
                             "started every 10 ms to ap-1's endpoint, one connection each",
                      runs=runs, failed=sum(r["failed"] for r in runs),
                      requests=sum(r["requests"] for r in runs),
                      longest_gap_ms=max(r["max_gap_ms"] for r in runs),
                      freeze_to_switch_ms=[w["freeze_to_switch"] for r in runs
                                           for w in r["windows"]],
                      target_failed=0, target_longest_gap_ms=100,
                      loadavg_at_end=common.loadavg())
        name = "migrate-openstack-%s" % stamp()

        def plot(axis):
            for target, points in timelines:
                axis.plot([t for t, _, ok in points if ok],
                          [1000 * lat for _, lat, ok in points if ok], ".", markersize=2,
                          label="to %s: answered" % target)
                bad = [(t, lat) for t, lat, ok in points if not ok]
                if bad:
                    axis.plot([t for t, _ in bad], [1000 * lat for _, lat in bad], "rx",
                              label="to %s: failed" % target)
            axis.set_xlabel("seconds since the client started")
            axis.set_ylabel("latency, ms (from scheduled start)")
            axis.set_yscale("log")
            axis.set_title("openstack driver: migrate under a 10 ms open loop "
                           "(%d failed, longest gap %.0f ms)" % (
                               result["failed"], result["longest_gap_ms"]))
            axis.legend(fontsize=8)
        common.write(name, result, plot)


if __name__ == "__main__":
    main()
