"""Chaos: kills survived and the time to converge after each kill.

The harness of tests/functional/test_chaos.py (mec_conpaas/edge/chaos.py)
runs twice on one private edge with the same seed: first with no kill (the
floor: how long the same random operations take undisturbed), then while
the manager is SIGKILLed at random moments (20 times, 5 with --quick) and a
node agent (5 times, 2 with --quick).  For each kill, the time to converge
is from the kill until every operation unfinished at that moment has ended
(until the manager answers again when none was); the ratio is its median
over the median undisturbed operation.  A kill is survived when, after the
run, every operation has ended and the nodes, proxies and ports match the
store.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from mec_conpaas.edge import chaos  # noqa: E402

OPTS = {"node_heartbeat_timeout": 6, "health_timeout": 30,
        "operation_retry_delay": 1, "orphan_sweep_interval": 3}


def phase(edge, client, seed, kills, agent_kills, operations, duration):
    run = chaos.Chaos(edge, client, seed, operations=operations,
                      manager_kills=kills, agent_kills=agent_kills,
                      duration=duration, log=lambda m: print(m, file=sys.stderr))
    run.run()
    converged = run.converge(timeout=300)
    deadline = time.monotonic() + 60
    while chaos.consistency_problems(edge, client) and time.monotonic() < deadline:
        time.sleep(0.5)
    problems = chaos.consistency_problems(edge, client)
    probes = run.finish_probes()
    ops = [o for o in client.operations()
           if chaos.wall(o["created_at"]) >= run.started - 1]
    # The next phase starts from an empty edge.
    problems += chaos.clean_up(edge, client, log=lambda m: print(m, file=sys.stderr))
    return run, ops, probes, converged, problems


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=20261129)
    args = p.parse_args()
    if args.quick:
        kills, agent_kills, operations, duration = 5, 2, 16, 45
    else:
        kills, agent_kills, operations, duration = 20, 5, 40, 120
    with common.BenchEdge("mcc-", 9694, **OPTS) as b:
        c, edge = b.client, b.edge
        status = edge.status()
        _, calm_ops, calm_probes, _, calm_problems = phase(
            edge, c, args.seed, 0, 0, operations, duration)
        t0 = time.monotonic()
        run, ops, probes, converged, problems = phase(
            edge, c, args.seed, kills, agent_kills, operations, duration)
        elapsed = time.monotonic() - t0

    def span(o):
        return chaos.wall(o["updated_at"]) - chaos.wall(o["created_at"])

    floor = [span(o) for o in calm_ops if o["state"] == "SUCCEEDED"]
    per_kill = []
    for k in run.killer.kills:
        pending = [o for o in ops if chaos.wall(o["created_at"]) <= k["killed"]
                   < chaos.wall(o["updated_at"])]
        end = max([chaos.wall(o["updated_at"]) for o in pending] + [k["back"]])
        per_kill.append(dict(k, in_flight=len(pending),
                             converge_s=round(end - k["killed"], 2)))
    conv = [k["converge_s"] for k in per_kill]
    ended = all(o["state"] in chaos.TERMINAL for o in ops)
    floor_median = statistics.median(floor) if floor else None
    summary = {
        "benchmark": "chaos", "seed": args.seed, "quick": args.quick,
        "manager_kills": kills, "agent_kills": agent_kills,
        "kills_survived": len(per_kill) if ended and not problems else 0,
        "end_state_problems": problems,
        "end_state_problems_undisturbed": calm_problems,
        "converge_after_kill_s": {"median": statistics.median(conv) if conv else None,
                                  "max": max(conv) if conv else None},
        "converge_after_chaos_s": round(converged, 2),
        "floor_undisturbed_operation_s": {
            "median": round(floor_median, 2) if floor else None,
            "max": round(max(floor), 2) if floor else None, "count": len(floor)},
        "ratio_median_converge_vs_floor": round(statistics.median(conv) / floor_median, 2)
        if conv and floor_median else None,
        "operations": {"with_kills": len(ops), "undisturbed": len(calm_ops),
                       "failed_with_kills": sum(o["state"] == "FAILED" for o in ops),
                       "failed_undisturbed": sum(o["state"] == "FAILED"
                                                 for o in calm_ops)},
        "probes": {"with_kills": len(probes),
                   "failed_with_kills": sum(not r["ok"] for r in probes),
                   "undisturbed": len(calm_probes),
                   "failed_undisturbed": sum(not r["ok"] for r in calm_probes)},
        "chaos_phase_s": round(elapsed, 1), "kills": per_kill,
        "latency_shaping": common.shaping_note(status), "machine": common.machine(),
    }

    def plot(ax):
        xs = range(1, len(per_kill) + 1)
        ax.bar(xs, conv, color=["tab:blue" if k["what"] == "manager" else "tab:orange"
                                for k in per_kill])
        if floor_median:
            ax.axhline(floor_median, color="green", linestyle="--",
                       label="floor: median undisturbed operation %.1f s"
                       % floor_median)
        ax.set_xlabel("kill (blue: manager, orange: node agent)")
        ax.set_ylabel("seconds from kill to convergence")
        ax.set_title("Chaos: %d kills survived, median %.1f s, max %.1f s"
                     % (summary["kills_survived"], statistics.median(conv) if conv
                        else 0, max(conv) if conv else 0))
        ax.legend()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    common.write("chaos-%s%s" % ("quick-" if args.quick else "", stamp), summary, plot)


if __name__ == "__main__":
    main()
