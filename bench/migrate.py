"""Migrations under load: failed requests and longest gap between answers.

A Wi-Fi user on ap-1 sends a request every 10 ms through ap-1's stable
endpoint while the service migrates back and forth between ap-1 and ap-3
(10 times, or 3 with --quick).  The floor, in the same run: the same client
for the same length of time with no migration; its longest gap is what the
network, HAProxy and the app cost anyway.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from mec_conpaas.edge import loadgen  # noqa: E402
from mec_conpaas.edge.loadgen import ClientLoad as Load  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--migrations", type=int)
    args = p.parse_args()
    count = args.migrations or (3 if args.quick else 10)
    with common.BenchEdge("mcm-", 9693) as b:
        c, edge = b.client, b.edge
        status = edge.status()
        c.wait(c.create_service("web", "mig", node="ap-1")["operation"]["id"])
        port = c.service("mig")["port"]
        mem = common.MemorySampler(edge)
        load = Load(edge, "ap-1", port, interval=0.01)
        t0 = time.monotonic()
        durations, windows = [], []
        targets = ["ap-3", "ap-1"]
        for n in range(count):
            s = time.monotonic()
            op = c.wait(c.migrate("mig", targets[n % 2])["operation"]["id"])
            assert op["state"] == "SUCCEEDED", op
            durations.append(time.monotonic() - s)
            windows.extend(op["windows"])
            print("migration %d -> %s: %.2f s" % (n + 1, targets[n % 2], durations[-1]),
                  file=sys.stderr)
            time.sleep(0.3)
        during = load.stop()
        elapsed = time.monotonic() - t0
        steady = Load(edge, "ap-1", port, interval=0.01)
        time.sleep(elapsed)
        calm = steady.stop()
        memory = mem.finish()
    switch_ms = [w["freeze_to_switch"] for w in windows]
    mig = loadgen.summarize(during)
    base = loadgen.summarize(calm)
    hits = [r["hits"] for r in during if r["ok"]]
    summary = {
        "benchmark": "migrate", "migrations": count,
        "requests": mig["requests"], "failed_requests": mig["failed"],
        "target_failed": 0, "max_gap_ms": mig["max_gap_ms"], "target_max_gap_ms": 100,
        "floor_max_gap_ms_no_migration": base["max_gap_ms"],
        "ratio_gap_vs_floor": round(mig["max_gap_ms"] / base["max_gap_ms"], 2)
        if base["max_gap_ms"] else None,
        "state_kept": hits == list(range(hits[0], hits[0] + len(hits))) if hits else False,
        "freeze_to_switch_ms": switch_ms, "critical_window_steps_ms": windows,
        "migration_s": [round(d, 2) for d in durations],
        "errors": mig["errors"], "memory_mb": memory,
        "latency_shaping": common.shaping_note(status), "machine": common.machine(),
    }

    def plot(ax):
        t0 = during[0]["end"]
        ok = [r for r in during if r["ok"]]
        ax.plot([r["end"] - t0 for r in ok[1:]],
                [1000 * (b["end"] - a["end"]) for a, b in zip(ok, ok[1:])],
                ".", markersize=2, label="during %d migrations" % count)
        ax.axhline(100, color="red", linestyle="--", label="target 100 ms")
        ax.set_xlabel("seconds")
        ax.set_ylabel("gap between answers (ms)")
        ax.set_title("Client every 10 ms: %d failed, max gap %.0f ms (floor %.0f ms)"
                     % (mig["failed"], mig["max_gap_ms"] or 0, base["max_gap_ms"] or 0))
        ax.legend()
    common.write("migrate", summary, plot)


if __name__ == "__main__":
    main()
