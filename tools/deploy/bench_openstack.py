"""Provisioning and migration through the openstack driver on a kept deploy test bed
(issue 9's benchmarks; tools/deploy/testbed.sh, deployed with the roles' defaults, e.g.
by `MEC_DEPLOY_KEEP=1 bash tools/ci/deploy.sh`). Run as root on the test host:

    .venv/bin/python tools/deploy/bench_openstack.py [--rounds 5]

provision: `service create web` through the PaaS CLI on the master until the first HTTP
200 through ap-1's endpoint, and in the same run the floor, `openstack server create
--wait` of the same glance image and flavor in ap-1's zone (to ACTIVE; the image's init
then waits for the node agent, so the app's own start is not in the floor): medians and
their ratio. migrate: a client on the master sends a request every 10 ms to ap-1's
endpoint while the service migrates to ap-2 and back: failed requests, longest gap.
Writes bench/results/provision-openstack-<UTC>.json and migrate-openstack-<UTC>.json.
The machine is shared with other work: the JSON says so, and the floor runs
interleaved with the PaaS rounds to see the same load.
"""
import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, REPO)
from tests.deploy import conftest  # noqa: E402  (the test bed's Host, over SSH)
from tests.deploy.test_deploy import PAAS_CLI  # noqa: E402

PYTHON = "/opt/mec-conpaas/venv/bin/python"
CLIENT = os.path.join(REPO, "tests", "deploy", "interval_client.py")
MACHINE = ("2-core x86-64 shared with other helpers' builds and tests; test bed = Debian 12 "
           "LXC system containers (master + 2 APs), nested nova LXC")


def hosts():
    with open(os.path.join(conftest.STATE, "inventory.yml")) as f:
        inv = f.read()
    found = dict(re.findall(r"^ {8}(\S+):\n {10}ansible_host: (\S+)$", inv, re.M))
    return {name: conftest.Host(name, addr) for name, addr in found.items()}


def paas(master, args, timeout=900):
    return master.run(PAAS_CLI + args, timeout=timeout).stdout


def first_200(master, address, port, deadline=120):
    out = master.run(
        "while [ \"$(curl -s -m 2 -o /dev/null -w '%%{http_code}' "
        "http://%s:%d/)\" != 200 ]; do sleep 0.05; done; echo ok" % (address, port),
        timeout=deadline)
    return out.stdout.strip() == "ok"


def paas_round(master, ap, n):
    name = "bench-os-%d" % n
    t0 = time.monotonic()
    paas(master, "service create web %s --node %s -f json" % (name, ap.name))
    port = json.loads(paas(master, "service show %s -f json" % name))["port"]
    first_200(master, ap.address, port)
    seconds = time.monotonic() - t0
    paas(master, "service delete %s" % name)
    return seconds


def floor_round(master, ap, image, flavor, n):
    name = "bench-floor-%d" % n
    t0 = time.monotonic()
    master.openstack("server create --image %s --flavor %s --network provider "
                     "--availability-zone %s --wait %s -f json" % (
                         image, flavor, ap.name, name), timeout=600)
    seconds = time.monotonic() - t0
    master.openstack("server delete --wait %s" % name, timeout=600)
    return seconds


def migrate_run(master, aps):
    first, last = aps[0], aps[-1]
    name = "bench-os-mig"
    master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)
    paas(master, "service create web %s --node %s -f json" % (name, first.name))
    port = json.loads(paas(master, "service show %s -f json" % name))["port"]
    master.put(CLIENT, "/var/tmp/mec-interval-client.py")
    out = []
    try:
        for target in (last, first):
            master.run("rm -f /tmp/mec-bench.stop")
            master.run("nohup %s /var/tmp/mec-interval-client.py http://%s:%d/ "
                       "/tmp/mec-bench.stop > /tmp/mec-bench.json 2>&1 &"
                       % (PYTHON, first.address, port))
            time.sleep(2)
            t0 = time.monotonic()
            paas(master, "service migrate %s --to %s -f json" % (name, target.name))
            seconds = time.monotonic() - t0
            time.sleep(1)
            master.run("touch /tmp/mec-bench.stop")
            time.sleep(1.5)
            client = json.loads(master.run("cat /tmp/mec-bench.json").stdout)
            out.append(dict(client, to=target.name, migrate_s=round(seconds, 2)))
            print("migrate to %s: %.1f s, %s" % (target.name, seconds, client), flush=True)
    finally:
        master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    bed = hosts()
    master = bed["master"]
    aps = [h for n, h in sorted(bed.items()) if n.startswith("ap-")]
    ap = aps[0]
    # Warm: the base image in glance and nova's _base cache on ap-1, the flavor made.
    paas_round(master, ap, 0)
    image = next(i["Name"] for i in master.openstack("image list -f json")
                 if i["Name"].startswith("mec-conpaas-base-"))
    flavor = next(f["Name"] for f in master.openstack("flavor list -f json")
                  if f["Name"].startswith("mec-"))
    paas_s, floor_s = [], []
    for n in range(1, args.rounds + 1):
        paas_s.append(paas_round(master, ap, n))
        floor_s.append(floor_round(master, ap, image, flavor, n))
        print("round %d: paas %.1f s, floor %.1f s" % (n, paas_s[-1], floor_s[-1]),
              flush=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    ratio = statistics.median(paas_s) / statistics.median(floor_s)
    result = {"benchmark": "provision-openstack", "machine": MACHINE, "shared": True,
              "rounds": args.rounds, "node": ap.name, "image": image, "flavor": flavor,
              "paas_create_to_200_s": [round(x, 2) for x in paas_s],
              "floor_server_create_wait_s": [round(x, 2) for x in floor_s],
              "paas_median_s": round(statistics.median(paas_s), 2),
              "floor_median_s": round(statistics.median(floor_s), 2),
              "ratio": round(ratio, 2), "target_ratio": 1.3,
              "floor": "openstack server create --wait (to ACTIVE), same image, flavor "
                       "and zone, interleaved with the PaaS rounds; without the app's start"}
    path = os.path.join(REPO, "bench", "results", "provision-openstack-%s.json" % stamp)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print("provision: paas median %.1f s, floor median %.1f s, ratio %.2f -> %s" % (
        result["paas_median_s"], result["floor_median_s"], ratio, path))
    runs = migrate_run(master, aps)
    result = {"benchmark": "migrate-openstack", "machine": MACHINE, "shared": True,
              "client": "one GET every 10 ms to ap-1's endpoint (tests/deploy/"
                        "interval_client.py, on the master)",
              "runs": runs, "failed": sum(r["failed"] for r in runs),
              "longest_gap_ms": max(r["longest_gap_ms"] for r in runs),
              "target_failed": 0, "target_longest_gap_ms": 100}
    path = os.path.join(REPO, "bench", "results", "migrate-openstack-%s.json" % stamp)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print("migrate: %s -> %s" % ({k: result[k] for k in ("failed", "longest_gap_ms")}, path))


if __name__ == "__main__":
    main()
