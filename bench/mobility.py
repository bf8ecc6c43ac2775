"""Users walking ap-1 -> ap-2 -> ap-3: latency they see under each placement.

The bundled mobility trace (mec_conpaas/etc/mobility-trace.csv: alice and
bob, 30 s per access point; replayed ``--speed`` times faster, 1 = real
time) drives two emulated users.  Each sends requests (``user_interval``: all
together a quarter of what one instance on the far node can serve, the
same rate in every placement) to the user endpoint of the AP it is
attached to (edge/loadgen.py's client), using
a web service (the sample counter) created on ap-1.  The edge is the one
with a far cloud (mec_conpaas/etc/edge-topology-cloud.yaml: three access
points and ``cloud-1`` 30 ms behind ap-1).  Placements, one after the other
on one edge:

- ``static``: the service stays on ap-1;
- ``follow``: follow-the-user;
- ``follow+ahead``: follow-the-user and ahead-of-handover;
- ``cloud``: the service on the far node ``cloud-1``, as ENORM compares
  against a distant data centre (the access points are drained meanwhile, so
  the far-cloud loop keeps it there rather than bring it back);
- ``oscillating``: follow-the-user and ahead-of-handover on the oscillating
  trace (mec_conpaas/etc/mobility-trace-oscillating.csv: a user flipping
  between ap-1 and ap-2, 8 handovers in 16 s, then staying at ap-2): the
  migrations per handover (target: at most one).

The floor, in the same run: the same users, not moving, at ap-1 with the
service on ap-1 (one Wi-Fi hop, HAProxy, the app) for the same time.
Targets: p95 within 2 ms of the floor, zero failed requests.  The policies
run with a 2 s dwell time (``[policies] min_dwell``), so that a trace
replayed faster still gives them time to settle.
"""
import argparse
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from mec_conpaas.edge import loadgen  # noqa: E402
from mec_conpaas.edge import traces  # noqa: E402
from mec_conpaas.edge import users as users_mod  # noqa: E402
from mec_conpaas.edge.loadgen import ClientLoad as Load  # noqa: E402
from mec_conpaas.manager import topology as topology_mod  # noqa: E402

POLICIES = {"static": {},
            "follow": {"follow_the_user": True},
            "follow+ahead": {"follow_the_user": True, "ahead_of_handover": True}}
BASE = {"interval": 0.5, "min_dwell": 2.0}
ETC = os.path.dirname(traces.DEFAULT)
CLOUD_TOPOLOGY = os.path.join(ETC, "edge-topology-cloud.yaml")
OSCILLATING = os.path.join(ETC, "mobility-trace-oscillating.csv")


def stats(results):
    lat = [1000 * (r["end"] - r["start"]) for r in results]
    return {"requests": len(results), "failed": sum(not r["ok"] for r in results),
            "p50_ms": _round(loadgen.percentile(lat, 50)),
            "p95_ms": _round(loadgen.percentile(lat, 95)),
            "p99_ms": _round(loadgen.percentile(lat, 99))}


def _round(v):
    return round(v, 2) if v is not None else None


def user_interval(topology, users, cloud_node):
    """Seconds between one user's requests, the same in every placement:
    all users together send a quarter of what one instance on the far
    node can serve to the farthest access point.  HAProxy lets an instance
    have ``instance_maxconn`` requests at once, and each holds its slot for
    about two round trips on that path (the request, and the app's answer
    behind its connection); above that rate the far instance's queue grows
    until requests time out (the session-8 run: 200 requests/s against
    about 29/s), and the cloud placement measures its queue, not its
    latency."""
    from mec_conpaas.conf import manager as manager_conf
    from mec_conpaas.policies import placement
    aps = [n for n in topology["nodes"] if n not in (cloud_node, "master")]
    one_way_ms = max(placement.distances(topology, aps + [cloud_node], [cloud_node])[
        cloud_node][ap] for ap in aps)
    maxconn = {o.name: o.default for o in manager_conf.manager_opts}["instance_maxconn"]
    per_second = maxconn / (4 * one_way_ms / 1000.0)
    return users / (per_second / 4)


def run(b, name, steps, speed, policies, node="ap-1", move=True, interval=0.01):
    """One placement: returns (requests, policy operations, handover times)."""
    edge, c = b.edge, b.client
    edge.restart_manager(policies=dict(BASE, **policies) if policies else {})
    edge._wait_nodes()
    far = node not in edge.net.wifi_aps()
    if far:  # no access point may take it back from the cloud meanwhile
        for ap in edge.net.wifi_aps():
            c.drain_node(ap, reason="bench: the cloud placement")
    c.wait(c.create_service("web", "walk", node=node)["operation"]["id"])
    port = c.service("walk")["port"]
    users = users_mod.for_edge(edge)
    people = sorted({s.user for s in steps})
    first = {u: next(s.ap for s in steps if s.user == u) for u in people}
    for u in people:
        users.attach(u, first[u])
    url = "http://%s:%d/" % (edge.net.user_endpoint(), port)
    loads = [Load(edge, None, port, netns=users.netns(u), url=url, interval=interval)
             for u in people]
    load0 = common.loadavg()
    t0 = time.monotonic()
    wall0 = datetime.datetime.now(datetime.timezone.utc)
    handovers = []
    end = max(s.time_s for s in steps) / speed  # the users leave: loads stop

    def attach(u, ap):
        if move and users.where(u) != ap:
            handovers.append((time.monotonic() - t0, u, ap))
            users.attach(u, ap)
    traces.replay([s for s in steps if s.ap != traces.DETACH], attach, None, speed)
    time.sleep(max(0.0, end - (time.monotonic() - t0)))
    results = [r for load in loads for r in load.stop()]
    for r in results:
        r["t"] = r["start"] - t0
    ops = []
    for o in c.operations():
        created = datetime.datetime.fromisoformat(o["created_at"])
        reason = (o["params"] or {}).get("reason")
        if o["service"] == "walk" and reason and created >= wall0:
            ops.append({"kind": o["kind"], "state": o["state"], "reason": reason,
                        "t": round((created - wall0).total_seconds(), 2),
                        "standby": bool((o["params"] or {}).get("standby"))})
    c.wait(c.delete_service("walk")["operation"]["id"])
    if far:
        for ap in edge.net.wifi_aps():
            c.enable_node(ap)
    for u in people:
        users.remove(u)
    load = {"loadavg_at_start": load0, "loadavg_at_end": common.loadavg()}
    print("%s: %s, %d policy operation(s), load %s" % (name, stats(results), len(ops),
                                                      load), file=sys.stderr)
    return results, sorted(ops, key=lambda o: o["t"]), handovers, load


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="replay 6x faster (else 2x)")
    p.add_argument("--speed", type=float)
    p.add_argument("--trace", default=traces.DEFAULT)
    p.add_argument("--oscillating", default=OSCILLATING)
    p.add_argument("--cloud-node", default="cloud-1",
                   help="far-cloud node for the 'cloud' placement")
    p.add_argument("--interval", type=float,
                   help="seconds between one user's requests (default: what the "
                        "far instance can serve, user_interval)")
    common.add_quiet_args(p)
    args = p.parse_args()
    speed = args.speed or (6.0 if args.quick else 2.0)
    out, runs = {}, {}
    quiet = common.quiet_from(args)
    t_start = time.monotonic()
    with common.BenchEdge("mcu-", 9694, topology=CLOUD_TOPOLOGY) as b:
        status = b.edge.status()
        steps = traces.load(args.trace, b.edge.net.aps)
        interval = args.interval or user_interval(
            topology_mod.load(CLOUD_TOPOLOGY), len({st.user for st in steps}),
            args.cloud_node)
        runs["floor"] = run(b, "floor", steps, speed, {}, move=False, interval=interval)
        for name, pol in POLICIES.items():
            runs[name] = run(b, name, steps, speed, pol, interval=interval)
        runs["cloud"] = run(b, "cloud", steps, speed, {}, node=args.cloud_node,
                            interval=interval)
        runs["oscillating"] = run(b, "oscillating", traces.load(
            args.oscillating, b.edge.net.aps), speed, POLICIES["follow+ahead"],
            interval=interval)
    base = stats(runs["floor"][0])
    for name, (results, ops, handovers, load) in runs.items():
        s = stats(results)
        s.update(load)
        s["p95_over_floor_ms"] = _round(s["p95_ms"] - base["p95_ms"])
        s["migrations"] = sum(o["kind"] == "migrate" for o in ops)
        s["standbys"] = sum(o["standby"] for o in ops)
        s["handovers"] = len(handovers)
        s["migrations_per_handover"] = round(s["migrations"] / len(handovers), 3) \
            if handovers else None
        s["operations"] = ops
        out[name] = s
    summary = {
        "benchmark": "mobility", "trace": os.path.basename(args.trace), "speed": speed,
        "placements": out, "floor": base,
        "targets": {"p95_over_floor_ms": 2.0, "failed": 0},
        "cloud_node": args.cloud_node, "topology": os.path.basename(CLOUD_TOPOLOGY),
        "oscillating_trace": os.path.basename(args.oscillating),
        "policies": BASE, "user_interval_s": round(interval, 3),
        **quiet, "loadavg_at_end": common.loadavg(),
        **common.load_note(quiet["loadavg_at_start"][0], common.loadavg()[0]),
        "floor_failed_requests": base["failed"],
        "duration_s": round(time.monotonic() - t_start, 1),
        "latency_shaping": common.shaping_note(status), "machine": common.machine(),
    }

    def plot(ax):
        colours = {"floor": "grey", "static": "tab:red", "follow": "tab:blue",
                   "follow+ahead": "tab:green", "cloud": "tab:purple",
                   "oscillating": "tab:orange"}
        for name, (results, ops, _handovers, _load) in runs.items():
            ok = sorted((r for r in results if r["ok"]), key=lambda r: r["t"])
            ax.plot([r["t"] for r in ok], [1000 * (r["end"] - r["start"]) for r in ok],
                    ".", markersize=1, color=colours.get(name), label="%s (p95 %s ms)"
                    % (name, out[name]["p95_ms"]))
            for o in ops:
                ax.axvline(o["t"], color=colours.get(name), alpha=0.5,
                           linestyle=":" if o["standby"] else "--")
        for t, _u, _ap in runs["static"][2]:
            ax.axvline(t, color="black", alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("seconds into the trace (x%g); grey: handovers, dashed: "
                      "migrations, dotted: standbys" % speed, fontsize=7)
        ax.set_ylabel("request latency (ms)")
        ax.legend(fontsize=7, markerscale=8)
    common.write("mobility", summary, plot)


if __name__ == "__main__":
    main()
