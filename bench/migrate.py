"""Migrations under load: failed requests, longest gap, and the critical
window against the size of the state.

Window: two Wi-Fi users on ap-1 each start a request every 10 ms (an open
loop: a slow answer does not delay the next start) through ap-1's stable
endpoint, one opening a connection per request, the other keeping its
connections alive (a browser), while the sample web service migrates back
and forth between ap-1 and ap-3 (10 times, or 3 with --quick).  The floor,
in the same run: the same two users for the same length of time with no
migration; its longest gap is what the network, HAProxy and the app cost
anyway.  Target: no failed request, longest gap at most 30 ms above the
floor's.

Order (--compare-order): the manager migrates switch-first (the target's
app paused, every access point routed to it, then the source frozen and
the final delta moved); the window's migrations then run again
freeze-first (the source frozen before the switch, its held requests
retried on the target after its kill), with their own floor, and the
summary gives the ratio of the two orders' gaps above their floors.

Sweep (--sizes, MB): a service that appends to a journal in its state
directory at every request (a steady write rate: the open-loop user's 100
requests/s) and whose state directory also holds SIZE MB of 1 MB files,
migrated ap-1 -> ap-3 -> ap-1 under the same two users.  The bulk copy and
the pre-copy rounds run while the source serves; only the last round's
delta moves while it is frozen, so the critical window should not grow
with the state.

--peer podman: the same app in podman, checkpointed with CRIU on one
emulated AP and restored on another (``podman container checkpoint
--export`` / ``restore --import``), same users, same metrics; a peer that
cannot run here is reported with its error.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import peers  # noqa: E402

from mec_conpaas.edge import loadgen  # noqa: E402
from mec_conpaas.edge.loadgen import ClientLoad as Load  # noqa: E402

GAP_ABOVE_FLOOR_MS = 30
MODELS = {"per_request": False, "keep_alive": True}
QUIET_LOAD = 3.0
SLOW_MS = 1000


def wait_quiet(limit_s, waited_s=0):
    """common.wait_quiet below QUIET_LOAD (the target is a latency figure),
    under the keys this benchmark's results have always used.  ``waited_s``:
    how long a caller already waited (outside the edge slot, which a wait
    must not hold)."""
    got = common.wait_quiet(limit=QUIET_LOAD, max_wait=limit_s, waited_before=waited_s)
    return {"load_1min_at_start": got["loadavg_at_start"][0],
            "waited_for_quiet_s": round(got["waited_for_quiet_s"]),
            "quiet": got["was_quiet_at_start"]}


def proxy_log(edge, ap="ap-1"):
    """Where the requests that failed or took over SLOW_MS spent their time,
    from the user's AP's HAProxy log (``proxy_request_log``: accept time,
    client, frontend, backend/server, server address, TR/Tw/Tc/Tr/Ta,
    status, bytes, termination state, conns/retries, queues)."""
    slow, states, worst = 0, {}, {"Tw": 0, "Tc": 0, "Tr": 0}
    retried = 0
    try:
        lines = open(edge.path("logs", "haproxy-%s.log" % ap)).read().splitlines()
    except OSError as e:
        return {"error": str(e)}
    for line in lines:
        f = line.split()
        if len(f) < 12 or not f[0][:1].isdigit() or f[5].count("/") != 4:
            continue
        timers = [int(x) for x in f[5].split("/")]
        if timers[4] < SLOW_MS and f[6] == "200":
            continue
        slow += 1
        states[f[8]] = states.get(f[8], 0) + 1
        for k, v in zip(("Tw", "Tc", "Tr"), timers[1:4]):
            worst[k] = max(worst[k], v)
        retried += f[9].rsplit("/", 1)[-1] not in ("0", "")
    return {"requests_logged": sum(1 for x in lines if x[:1].isdigit()),
            "failed_or_over_%d_ms" % SLOW_MS: slow,
            "termination_states": states, "retried": retried,
            "max_of_them_ms": worst}

def cfg_default(name):
    from mec_conpaas.conf import node_agent
    return next(o.default for o in node_agent.node_opts if o.name == name)


def fill_state(edge, ap, instance_id, mb):
    """``mb`` files of 1 MB of random bytes in the instance's state
    directory, written where it is mounted (the AP's mount namespace)."""
    d = edge.path("nodes", ap, "instances", instance_id, "fs", "state", "bulk")
    subprocess.run(["nsenter", "--mount=/proc/%d/ns/mnt" % edge._pid("libvirtd-" + ap),
                    "--", "sh", "-c", 'mkdir -p "$1" && i=0 && while [ $i -lt %d ]; do '
                    'head -c 1048576 /dev/urandom > "$1/blob-$i"; i=$((i+1)); done' % mb,
                    "fill", d], check=True, timeout=600)


def user(edge, port, model):
    return Load(edge, "ap-1", port, interval=0.01, keepalive=MODELS[model])


def migrate(c, name, count, pause=0.3, order=None):
    """``count`` migrations between ap-1 and ap-3 (each to the one the
    service is not on); their windows and durations."""
    durations, windows = [], []
    for n in range(count):
        target = "ap-3" if c.service(name)["home_node"] == "ap-1" else "ap-1"
        s = time.monotonic()
        op = c.wait(c.migrate(name, target, order)["operation"]["id"])
        assert op["state"] == "SUCCEEDED", op
        durations.append(round(time.monotonic() - s, 2))
        windows.extend(op["windows"])
        print("%s: migration %d -> %s: %.2f s, freeze to switch %s ms" % (
            name, n + 1, target, durations[-1],
            op["windows"][-1]["freeze_to_switch"]), file=sys.stderr)
        time.sleep(pause)
    return durations, windows


def around(windows, results):
    """Per migration, what its user saw: the longest gap between two
    successful answers with the later one after the freeze and before the
    old instance was gone (plus 1 s); how many requests were sent while it
    was frozen, and when the last of them was answered, after the freeze."""
    out = []
    ok = sorted((r for r in results if r["ok"]), key=lambda r: r["end"])
    for w in windows:
        f, sw = w["at_freeze"], w["at_switch"]
        gone = sw + w["kill"] / 1000 + 1.0
        gaps = [b["end"] - a["end"] for a, b in zip(ok, ok[1:]) if f <= b["end"] <= gone]
        held = [r["end"] for r in results if f <= r["start"] <= sw]
        out.append({"gap_ms": round(1000 * max(gaps), 1) if gaps else None,
                    "held_requests": len(held),
                    "last_held_answered_after_freeze_ms":
                        round(1000 * (max(held) - f), 1) if held else None})
    return out


def counted_once(results):
    """Each user's answers counted every request once (their hits are
    consecutive; other users' requests came between them)."""
    def one(res):
        hits = sorted(r["hits"] for r in res if r["ok"])
        if not hits or len(set(hits)) < len(hits):
            return False  # a request counted twice: state taken mid-request
        # A failed request may have been counted all the same (answered
        # after the user gave up): then only uniqueness can be judged.
        return any(not r["ok"] for r in res) or \
            hits == list(range(hits[0], hits[0] + len(hits)))
    return all(one(res) for res in results.values())


def judge(during, floor):
    out = {}
    for m in MODELS:
        d, f = loadgen.summarize(during[m]), loadgen.summarize(floor[m])
        above = round(d["max_gap_ms"] - f["max_gap_ms"], 1) \
            if d["max_gap_ms"] is not None and f["max_gap_ms"] else None
        out[m] = {"during_migrations": d, "floor_no_migration": f,
                  "gap_above_floor_ms": above,
                  "ratio_gap_vs_floor": round(d["max_gap_ms"] / f["max_gap_ms"], 2)
                  if above is not None else None,
                  "meets_target": d["failed"] == 0 and above is not None
                  and above <= GAP_ABOVE_FLOOR_MS}
    return out


def window_run(b, count, order=None):
    """Per connection model (one user at a time: the app serves 100
    requests/s comfortably, not 200 on a shared machine): ``count``
    migrations under that user, then the floor, the same user for as long
    with no migration.  ``order``: the migrations' (the manager's default
    when None)."""
    c, edge = b.client, b.edge
    c.wait(c.create_service("web", "mig", node="ap-1")["operation"]["id"])
    port = c.service("mig")["port"]
    mem = common.MemorySampler(edge)
    during, floor, durations, windows = {}, {}, [], []
    for m in MODELS:
        u = user(edge, port, m)
        t0 = time.monotonic()
        d, w = migrate(c, "mig", count, order=order)
        during[m] = u.stop()
        elapsed = time.monotonic() - t0
        durations += d
        windows += [dict(x, user=m, seen=s) for x, s in zip(w, around(w, during[m]))]
        u = user(edge, port, m)
        time.sleep(elapsed)
        floor[m] = u.stop()
    memory = mem.finish()
    c.wait(c.delete_service("mig")["operation"]["id"])
    return {"migrations": count, "migration_s": durations, "windows": windows,
            "freeze_to_switch_ms": [w["freeze_to_switch"] for w in windows],
            "models": judge(during, floor), "state_kept": counted_once(during),
            "memory_mb": memory}, during, floor


def sweep_run(b, sizes, floor):
    """Per state size: two migrations (ap-1 -> ap-3 under the per-request
    user, back under the keep-alive one)."""
    c, edge = b.client, b.edge
    bundle = loadgen.journal_bundle(tempfile.mktemp(suffix=".tar.gz"))
    out = []
    try:
        for mb in sizes:
            name = "state%d" % mb
            c.wait(c.create_service("web", name, node="ap-1", bundle=bundle)[
                "operation"]["id"])
            svc = c.service(name)
            t = time.monotonic()
            fill_state(edge, "ap-1", svc["instances"][0]["id"], mb)
            fill_s = time.monotonic() - t
            during, durations, windows = {}, [], []
            for m in MODELS:
                u = user(edge, svc["port"], m)
                d, w = migrate(c, name, 1)
                during[m] = u.stop()
                durations += d
                windows += [dict(x, user=m, seen=s)
                            for x, s in zip(w, around(w, during[m]))]
            c.wait(c.delete_service(name)["operation"]["id"])
            models = judge(during, floor)
            out.append({
                "state_mb": mb, "fill_s": round(fill_s, 1), "migration_s": durations,
                "freeze_to_switch_ms": [w["freeze_to_switch"] for w in windows],
                "windows": windows, "state_kept": counted_once(during),
                "models": {m: {k: v for k, v in s.items() if k != "floor_no_migration"}
                           for m, s in models.items()}})
            print("state %d MB: freeze to switch %s ms, migrations %s s" % (
                mb, out[-1]["freeze_to_switch_ms"], durations), file=sys.stderr)
    finally:
        os.unlink(bundle)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--migrations", type=int)
    p.add_argument("--sizes", default="1,100,1024",
                   help="state sizes in MB for the sweep, comma-separated; "
                        "empty for none")
    p.add_argument("--peer", default="",
                   help="comma-separated peers to measure in the same run: podman")
    p.add_argument("--compare-order", default="freeze-first",
                   help="also run the window's migrations in this order (the "
                        "manager's default is switch-first), with its own "
                        "floor, and print the ratio; empty for none")
    p.add_argument("--name", default="migrate",
                   help="results file name under bench/results (without .json)")
    p.add_argument("--wait-quiet", type=float, default=600,
                   help="seconds to wait at most for the 1-min load to drop below %s"
                        % QUIET_LOAD)
    p.add_argument("--waited", type=float, default=0,
                   help="seconds already waited for it before this run (outside "
                        "tools/with-edge-slot: a wait must not hold an edge slot)")
    args = p.parse_args()
    load = wait_quiet(args.wait_quiet, args.waited)
    count = args.migrations or (3 if args.quick else 10)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    wanted_peers = [x for x in args.peer.split(",") if x.strip()]
    # Room for the largest state twice over (source and target instances
    # share nothing) plus the app: the instance disk is a sparse image.
    disk_mb = max([1024] + [2 * mb + 512 for mb in sizes])
    with common.BenchEdge("mcm-", 9693, node_agent_opts={"disk_mb": disk_mb}) as b:
        status = b.edge.status()
        window, during, floor = window_run(b, count)
        compared = {}
        if args.compare_order:
            other = window_run(b, count, order=args.compare_order)[0]
            compared = {"order": args.compare_order, "models": other["models"],
                        "freeze_to_switch_ms": other["freeze_to_switch_ms"],
                        "windows": other["windows"], "state_kept": other["state_kept"],
                        "gap_above_floor_ms_ratio_to_ours": {
                            m: round(other["models"][m]["gap_above_floor_ms"]
                                     / window["models"][m]["gap_above_floor_ms"], 2)
                            if other["models"][m]["gap_above_floor_ms"] and
                            window["models"][m]["gap_above_floor_ms"] else None
                            for m in MODELS}}
        sweep = sweep_run(b, sizes, floor) if sizes else []
        peer_results = {name: peers.migrate(name, b, loadgen.JOURNAL_APP, MODELS,
                                            during_floor=floor)
                        for name in wanted_peers}
        proxy = proxy_log(b.edge)
    load["load_1min_at_end"] = round(os.getloadavg()[0], 2)
    per_req = window["models"]["per_request"]
    summary = dict(
        window, benchmark="migrate", sweep=sweep, peers=peer_results,
        order=sorted({w.get("order") for w in window["windows"]} - {None}),
        order_compared=compared,
        target={"failed_requests": 0, "gap_above_floor_ms": GAP_ABOVE_FLOOR_MS},
        # The per-request user's figures, under the names earlier runs used.
        requests=per_req["during_migrations"]["requests"],
        failed_requests=sum(m["during_migrations"]["failed"]
                            for m in window["models"].values()),
        max_gap_ms=per_req["during_migrations"]["max_gap_ms"],
        floor_max_gap_ms_no_migration=per_req["floor_no_migration"]["max_gap_ms"],
        ratio_gap_vs_floor=per_req["ratio_gap_vs_floor"],
        critical_window_steps_ms=window["windows"],
        freeze_to_switch_median_ms=statistics.median(window["freeze_to_switch_ms"]),
        proxy_log_user_ap=proxy, load=load,
        state_copy_rate_mb=cfg_default("state_copy_rate_mb"),
        latency_shaping=common.shaping_note(status), machine=common.machine(),
        **common.load_note(load["load_1min_at_start"], load["load_1min_at_end"],
                           QUIET_LOAD))

    def plot(ax):
        for m, marker in zip(MODELS, (".", "x")):
            ok = sorted((r for r in during[m] if r["ok"]), key=lambda r: r["end"])
            t0 = ok[0]["end"]
            ax.plot([r["end"] - t0 for r in ok[1:]],
                    [1000 * (y["end"] - x["end"]) for x, y in zip(ok, ok[1:])],
                    marker, markersize=2, label="%s during %d migrations" % (m, count))
        fl = per_req["floor_no_migration"]["max_gap_ms"]
        ax.axhline(fl, color="grey", linestyle=":", label="floor max gap (no migration)")
        ax.axhline(fl + GAP_ABOVE_FLOOR_MS, color="red", linestyle="--",
                   label="target: floor + %d ms" % GAP_ABOVE_FLOOR_MS)
        ax.set_xlabel("seconds")
        ax.set_ylabel("gap between answers (ms)")
        ax.set_title("Open loop, a request every 10 ms: %d failed, max gap %s ms "
                     "(floor %s ms)" % (summary["failed_requests"], summary["max_gap_ms"],
                                        fl), fontsize=9)
        ax.legend(fontsize=7)

    def plot_sweep(ax):
        xs = [s["state_mb"] for s in sweep]
        ax.plot(xs, [statistics.median(s["freeze_to_switch_ms"]) for s in sweep], "o-",
                label="freeze to switch (median)")
        ax.plot(xs, [s["models"]["per_request"]["during_migrations"]["max_gap_ms"]
                     for s in sweep], "s--",
                label="longest gap, per-request user")
        ax.plot(xs, [statistics.median(s["migration_s"]) * 1000 for s in sweep], "^:",
                label="whole migration (median)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("state directory (MB)")
        ax.set_ylabel("ms")
        ax.set_title("Critical window against state size")
        ax.legend(fontsize=7)
    common.write(args.name, summary, plot)
    if sweep:
        common.png(args.name + "-sweep", plot_sweep)


if __name__ == "__main__":
    main()
