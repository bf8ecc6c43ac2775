"""One access point's endpoint under overload: errors and p99 latency.

50 Wi-Fi users on ap-1 (closed loops: each sends its next request when the
last is answered) use one web service whose instances are on ap-1, ap-2
and ap-3.  Each request computes for 10 ms of CPU time in an instance of
``instance_cpus`` (half a core); with ``--wait`` it sleeps 0.2 s holding
one of ``instance_maxconn`` worker slots instead.  Either way 50 users
saturate the local instance, as the review's 50 users did.  Measured,
each on a fresh edge in the same run:

* ``ours``: the default proxy (per-instance maxconn, queue, far instances
  take the overflow: ``proxy_far_tier = spill``);
* ``old`` (the floor we replace): no maxconn, far instances are HAProxy
  backup servers (``proxy_far_tier = backup``, ``instance_maxconn = 0``);
* ``queue_only`` (full run only): maxconn and queue, but far instances
  stay backup servers, to tell what the queue and the spill each bring;
* ``maxconnN`` (on request): ours with ``instance_maxconn = N``.

Before the load, one user checks that an unsaturated endpoint still sends
every request to the local instance.
"""
import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from mec_conpaas.conf import manager as manager_conf  # noqa: E402
from mec_conpaas.edge import loadgen  # noqa: E402
from mec_conpaas.edge.loadgen import ClientLoad as Load  # noqa: E402

CLIENTS = 50
HOLD_S = 0.2  # how long a request holds one of the instance's worker slots
CPU_S = 0.01  # or how much CPU time it computes
DEFAULTS = {o.name: o.default for o in manager_conf.manager_opts}
MAXCONN = DEFAULTS["instance_maxconn"]
CONFIGS = {"ours": {},
           "old": {"proxy_far_tier": "backup", "instance_maxconn": 0},
           "queue_only": {"proxy_far_tier": "backup"}}

def deploy(c, bundle, aps=("ap-1", "ap-2", "ap-3")):
    """The service with one instance on each of ``aps``; its instances'
    address -> node."""
    op = c.wait(c.create_service("web", "slow", node=aps[0], bundle=bundle)
                ["operation"]["id"], 300)
    assert op["state"] == "SUCCEEDED", op
    for n, ap in enumerate(aps[1:], 2):
        op = c.wait(c.scale("slow", n, node=ap)["operation"]["id"], 300)
        assert op["state"] == "SUCCEEDED", op
    svc = c.service("slow")
    return svc, {i["address"]: i["node"] for i in svc["instances"]}


def served_by(results, nodes):
    count = collections.Counter(nodes.get(r.get("instance"), "?")
                                for r in results if r["ok"])
    return dict(sorted(count.items()))


def run(name, opts, seconds, port_base, cpu):
    with common.BenchEdge("mco-", port_base, **opts) as b:
        c, edge = b.client, b.edge
        status = edge.status()
        svc, nodes = deploy(c, loadgen.slow_web_bundle(
            os.path.join(b.state, "slow.tar.gz"),
            CLIENTS if cpu else MAXCONN,  # computing: the CPU is the limit
            CPU_S if cpu else HOLD_S, cpu))
        port = svc["port"]
        light = Load(edge, "ap-1", port, interval=0.05)
        time.sleep(2)
        light = light.stop()
        load = Load(edge, "ap-1", port, interval=0, clients=CLIENTS)
        time.sleep(seconds)
        results = load.stop()
    s = loadgen.summarize(results)
    return {"config": name, "manager_opts": opts, "requests": s["requests"],
            "failed_requests": s["failed"], "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
            "errors": s["errors"], "served_by": served_by(results, nodes),
            "throughput_rps": round(s["requests"] / seconds, 1),
            "light_load_served_by": served_by(light, nodes),
            "light_load_failed": loadgen.summarize(light)["failed"],
            "tiers_seen_from_ap1": {i["node"]: i["tier"] for i in svc["instances"]},
            "latency_ms": sorted(1000 * (r["end"] - r["start"]) for r in results),
            "latency_shaping": common.shaping_note(status)}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seconds", type=float)
    p.add_argument("--configs", nargs="+", help="configurations to run, among "
                   "%s, or maxconnN (ours with instance_maxconn N)" % ", ".join(CONFIGS))
    p.add_argument("--wait", action="store_true", help="requests wait "
                   "(%g s each, holding a worker slot) instead of computing "
                   "(%g s of CPU time each)" % (HOLD_S, CPU_S))
    args = p.parse_args()
    seconds = args.seconds or (15 if args.quick else 40)
    names = args.configs or (["ours", "old"] if args.quick
                             else ["ours", "old", "queue_only"])
    bad = [n for n in names if n not in CONFIGS and not (
        n.startswith("maxconn") and n[len("maxconn"):].isdigit())]
    if bad or not {"ours", "old"} <= set(names):
        p.error("--configs: %s; ours and old are needed for the ratio"
                % ("unknown %s" % ", ".join(bad) if bad else "missing ours or old"))
    runs = {}
    for name in names:
        print("config %s: %d users for %.0f s" % (name, CLIENTS, seconds),
              file=sys.stderr)
        opts = CONFIGS.get(name) if name in CONFIGS else \
            {"instance_maxconn": int(name[len("maxconn"):])}
        runs[name] = run(name, opts, seconds, 9694, not args.wait)
        print({k: v for k, v in runs[name].items() if k != "latency_ms"},
              file=sys.stderr)
    ours, old = runs["ours"], runs["old"]
    summary = {
        "benchmark": "overload", "clients": CLIENTS, "seconds": seconds,
        "instance_maxconn": MAXCONN,
        "app": "waits %g s in one of %d slots" % (HOLD_S, MAXCONN) if args.wait
        else "computes %g s of CPU time (instance: %g core)" % (
            CPU_S, DEFAULTS["instance_cpus"]),
        "failed_requests": ours["failed_requests"], "target_failed": 0,
        "p99_ms": ours["p99_ms"], "floor_p99_ms_old_config": old["p99_ms"],
        "floor_failed_requests_old_config": old["failed_requests"],
        "ratio_p99_old_vs_ours": round(old["p99_ms"] / ours["p99_ms"], 2)
        if ours["p99_ms"] else None,
        "runs": {n: {k: v for k, v in r.items() if k != "latency_ms"}
                 for n, r in runs.items()},
        "machine": common.machine(),
    }

    def plot(ax):
        for n, r in runs.items():
            lat = r["latency_ms"]
            ax.plot(lat, [100 * (i + 1) / len(lat) for i in range(len(lat))],
                    label="%s: p99 %.0f ms, %d failed" % (n, r["p99_ms"],
                                                          r["failed_requests"]))
        ax.set_xscale("log")
        ax.set_xlabel("request latency (ms, log)")
        ax.set_ylabel("% of requests")
        ax.set_title("%d users on ap-1, instances on ap-1..3 (maxconn %d)"
                     % (CLIENTS, MAXCONN), fontsize=10)
        ax.legend()
    common.write("overload", summary, plot)


if __name__ == "__main__":
    main()
