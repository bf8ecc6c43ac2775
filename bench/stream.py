"""Face recognition over a video stream (the paper's Fig. 5), three ways in
one run: the job through the PaaS on an access point (edge), through the
PaaS on the far cloud node (30 ms behind the backbone), and the same job
on this host with no container and no PaaS (a local Flink mini cluster
from .venv-flink, the same gateway code on loopback).

Per placement: processing time of one video (every frame sent at once,
until the last detection is in) and its frames per second; then a live
stream (one frame every ``--every`` s) and each frame's end-to-end
detection latency as the camera user sees it (sent → its detection read
back).  Overhead ratio = PaaS edge time per video / host time per video
(the paper: "a very small overhead"; target ≤ 1.10).

The camera user is ap-1's Wi-Fi user for edge and cloud, a process on the
host for the baseline.  Each Flink cluster is one JobManager + one
TaskManager (parallelism 1); the baseline's mini cluster is one JVM.  The
PaaS's instances get this machine's cores each (``--instance-cpus``), as
the host job has them.  For the cloud run the access points are drained,
or the manager would bring the service back to ap-1, nearest its user;
each PaaS run checks that its service stayed where it was created.

    sudo tools/with-edge-slot .venv/bin/python bench/stream.py [--quick]

``--moves``: the job's latency over time as it moves edge -> cloud -> edge
(ap-1 drained, then back), each phase's p50/p95 beside the host floor
measured in the same run (bench/results/stream-moves*.json and .png).
"""
import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from bench import common  # noqa: E402
from mec_conpaas.agents.service import flink  # noqa: E402
from mec_conpaas.edge import flink_image  # noqa: E402
from mec_conpaas.manager import topology as topology_mod  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "mec_conpaas", "samples", "facedetect")
FLINK_PY = os.path.join(ROOT, ".venv-flink", "bin", "python")
CLOUD = os.path.join(os.path.dirname(topology_mod.DEFAULT), "edge-topology-cloud.yaml")
PI4_2GB = {"cpus": 4.0, "memory_mb": 2048}
# The host job runs on every core of this machine (its mini cluster's JVM,
# the Python worker and OpenCV's threads share them).  The PaaS's
# JobManager and TaskManager get as many cpus each (``--instance-cpus``),
# so that the ratio compares the same job on the same CPU with and without
# the PaaS: with the Pi-sized default ([manager] flink_instance_cpus 1.0)
# the TaskManager had half the host job's CPU on a 2-core machine, and
# edge/host 1.798 (stream-quick-s10.json, quiet) was that sizing.
CORES = os.cpu_count() or 1


def frames(tmp, count, prefix):
    out = os.path.join(tmp, "frames-" + prefix)
    subprocess.run([FLINK_PY, os.path.join(SAMPLE, "frames.py"), str(count), out, prefix],
                   check=True, timeout=300)
    with open(out + ".expected") as f:
        return out, json.load(f)


def camera(url, path, every, netns=None, timeout=600):
    argv = [sys.executable, os.path.join(SAMPLE, "camera.py"), "--url", url,
            "--frames", path, "--every", str(every), "--timeout", str(timeout)]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 60)
    if res.returncode:
        raise RuntimeError("camera failed: " + res.stderr[-2000:])
    return json.loads(res.stdout)


def measure(url, tmp, args, tag, netns=None):
    """Warm up (the job's first frame), then a video and a live stream."""
    warm, _ = frames(tmp, 3, tag + "w")
    camera(url, warm, 0, netns, timeout=600)
    video, expected = frames(tmp, args.frames, tag + "v")
    v = camera(url, video, 0, netns)
    live, _ = frames(tmp, args.live_frames, tag + "l")
    lv = camera(url, live, args.every, netns)
    right = sum(1 for i, n in v["faces"].items() if n == expected[i])
    lat = lv["latency_ms"]
    return {"video": {"frames": v["frames"], "results": v["results"],
                      "seconds": v["seconds"], "fps": v["fps"],
                      "faces_right": right},
            "live": {"frames": lv["frames"], "results": lv["results"],
                     "every_s": args.every,
                     "latency_p50_ms": round(statistics.median(lat), 1) if lat else None,
                     "latency_p90_ms": round(lat[int(0.9 * (len(lat) - 1))], 1)
                     if lat else None,
                     "latency_ms": [round(x, 1) for x in lat]}}


def flink_limits(args):
    """What each JobManager/TaskManager container got: the memory option's
    default, which the bench edge keeps, and ``--instance-cpus``."""
    from mec_conpaas.conf import manager as manager_conf
    opts = {o.name: o.default for o in manager_conf.manager_opts}
    return {"instance_memory_mb": opts["flink_instance_memory_mb"],
            "instance_cpus": args.instance_cpus,
            "instance_cpus_default": opts["flink_instance_cpus"],
            "host_cores": CORES,
            "memory": flink.MEMORY}


def bench_edge(tmp, args, **opts):
    """The bench's private edge: bench_topology's, its flink instances of
    ``--instance-cpus`` cpus each."""
    return common.BenchEdge("mbs-", 9697, topology=bench_topology(tmp, args),
                            health_timeout=120, flink_instance_cpus=args.instance_cpus,
                            **opts)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_run(tmp, args):
    """The job on this host: local mini cluster, gateway on loopback."""
    http_port, feed_port = free_port(), free_port()
    gw = flink.Gateway(os.path.join(tmp, "host-gateway"))
    httpd = flink.serve_gateway(gw, "127.0.0.1", http_port, feed_port)
    env = dict(os.environ, MEC_FLINK_FEED="127.0.0.1:%d" % feed_port,
               MEC_FLINK_SINK="http://127.0.0.1:%d/results" % http_port,
               MEC_FLINK_PARALLELISM="1",
               PATH=os.path.dirname(FLINK_PY) + ":" + os.environ.get("PATH", ""))
    log = open(os.path.join(tmp, "host-job.log"), "w")
    job = subprocess.Popen([FLINK_PY, os.path.join(SAMPLE, "job.py")], env=env,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return measure("http://127.0.0.1:%d" % http_port, tmp, args, "h")
    finally:
        os.killpg(job.pid, 9)
        job.wait()
        httpd.shutdown()


def paas_run(edge, client, tmp, args, node, tag):
    """The job through the PaaS on ``node``, its camera user at ap-1.

    On a cloud node the access points are drained for the run (as
    bench/mobility.py's cloud placement): the manager brings a service on
    the cloud back to an access point with room, nearest its users, within
    one monitor pass (README "Flink and the far cloud"), and session 10's
    "cloud" figures (31.8 s per video) timed that return instead, the job's
    savepoint and restart on ap-1.  Every run checks that its service ran
    where it was created from start to end."""
    name = "stream-" + tag
    far = node not in edge.net.wifi_aps()
    drained = []
    try:
        if far:
            for ap in edge.net.wifi_aps():
                client.drain_node(ap, reason="bench: the cloud placement")
                drained.append(ap)
        op = client.create_service("flink", name, node=node, count=2,
                                   bundle=os.path.join(SAMPLE, "job.py"))
        t0 = time.monotonic()
        res = client.wait(op["operation"]["id"], 600)
        if res["state"] != "SUCCEEDED":
            raise RuntimeError("create on %s: %s" % (node, res))
        created = time.monotonic() - t0
        try:
            svc = client.service(name)
            ap_addr, _ = edge.net.client_addresses("ap-1")
            stayed(client, name, node)
            out = measure("http://%s:%d" % (ap_addr, svc["port"]), tmp, args, tag,
                          netns=edge.net.client_netns("ap-1"))
            out["nodes"] = stayed(client, name, node)
            out["create_s"] = round(created, 1)
            out["access_points_drained"] = drained
            return out
        finally:
            client.wait(client.delete_service(name)["operation"]["id"], 300)
    finally:
        for ap in drained:
            client.enable_node(ap)


def stayed(client, name, node):
    """The nodes of ``name``'s instances, which must all be ``node``, with
    no operation but its create on it so far: a bench that measured a move
    would not say so otherwise."""
    placed = sorted({i["node"] for i in client.service(name)["instances"]})
    moved = [(o["kind"], o["state"], o.get("reason")) for o in client.operations()
             if o["service"] == name and o["kind"] != "create"]
    if placed != [node] or moved:
        raise RuntimeError("%s is on %s, not %s (operations: %s)" % (
            name, placed, node, moved or "none but its create"))
    return placed


def ap_capacity(args):
    """A Pi 4 with 2 GB, with cpus for a JobManager and a TaskManager of
    ``--instance-cpus`` each beside the default reserve (more than a Pi's
    4 when they get this machine's cores)."""
    from mec_conpaas.conf import qos as qos_conf
    reserve = {o.name: o.default for o in qos_conf.capacity_opts}["reserve_cpus"]
    return dict(PI4_2GB, cpus=max(PI4_2GB["cpus"], 2 * args.instance_cpus + reserve))


def bench_topology(tmp, args):
    """edge-topology-cloud.yaml with Pi 4 access points (2 GB): a flink
    instance holds [manager] flink_instance_memory_mb (640 MB), so a Pi
    3's 1 GB (the default capacity, 128 MB reserved) takes one and
    admission would split the JobManager and its TaskManager over two
    access points; the bench wants both on one (:func:`ap_capacity`)."""
    with open(CLOUD) as f:
        topo = yaml.safe_load(f)
    for spec in topo["nodes"].values():
        if spec.get("kind") != "cloud":
            spec["capacity"] = dict(spec.get("capacity") or {}, **ap_capacity(args))
    path = os.path.join(tmp, "topology-stream.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(topo, f, sort_keys=False)
    return path


def percentiles(lat):
    lat = sorted(x for x in lat if x is not None)
    if not lat:
        return {"frames": 0, "p50_ms": None, "p95_ms": None}
    return {"frames": len(lat), "p50_ms": round(statistics.median(lat), 1),
            "p95_ms": round(lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))], 1)}


def wait_op(client, res, timeout=600):
    op = client.wait(res["operation"]["id"], timeout)
    if op["state"] != "SUCCEEDED":
        raise RuntimeError("%s: %s" % (op["kind"], op))
    return op


def gateway_stats(netns, url):
    """The gateway's ``/stats`` as ap-1's Wi-Fi user gets it, or None
    (the proxies switching)."""
    try:
        return json.loads(subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c",
             "import sys,urllib.request as u;print(u.urlopen(sys.argv[1],timeout=5)"
             ".read().decode())", url + "/stats"], capture_output=True, text=True,
            timeout=30).stdout)
    except (ValueError, subprocess.TimeoutExpired):
        return None


def wait_job_running(netns, url, timeout=600):
    """Until the job runs again after a move: a job RUNNING on the new
    JobManager *and* results coming in (a job Flink keeps restarting is
    RUNNING now and then without processing anything: session 7's run
    took that for the job running on the cloud).  Returns (when, the
    savepoint the job was restored from)."""
    deadline = time.monotonic() + timeout
    base = None
    while time.monotonic() < deadline:
        stats = gateway_stats(netns, url)
        flink_now = (stats or {}).get("flink") or {}
        if stats and any(j["state"] == "RUNNING" for j in flink_now.get("jobs", [])):
            if base is None:
                base = stats["results"]
            elif stats["results"] > base:
                return time.monotonic(), flink_now.get("restored_from")
        time.sleep(0.5)
    raise RuntimeError("the job did not run again within %d s" % timeout)


def moves_run(b, tmp, args):
    """The job on ap-1, its camera user on ap-1's Wi-Fi streaming all along;
    ap-1 is drained (the access point goes away: the other two are
    drained first, so the cloud node is the only one left) and the
    service moves to the cloud node; once the job runs there again, and
    ``--phase`` s later, ap-1 is enabled again and the manager brings the
    service back by itself (manager/farcloud.py).  Every frame's latency
    over time, the moves marked (from the move's start until the job runs
    again: the operation, then the JobManager's JVM and the job's
    submission from the savepoint)."""
    client, edge = b.client, b.edge
    name = "stream-moves"
    wait_op(client, client.create_service("flink", name, node="ap-1", count=2,
                                          bundle=os.path.join(SAMPLE, "job.py")))
    svc = client.service(name)
    if {i["node"] for i in svc["instances"]} != {"ap-1"}:
        raise RuntimeError("%s landed on %s" % (name, svc["instances"]))
    url = "http://%s:%d" % (edge.net.client_addresses("ap-1")[0], svc["port"])
    netns = edge.net.client_netns("ap-1")
    warm, _ = frames(tmp, 3, "mw")
    camera(url, warm, 0, netns, timeout=600)
    # The paper's Fig. 5 figure: processing time of one video on the edge
    # (its host counterpart in host_floor, same run).
    video_path, expected = frames(tmp, args.frames, "mv")
    v = camera(url, video_path, 0, netns)
    video = {"frames": v["frames"], "results": v["results"], "seconds": v["seconds"],
             "fps": v["fps"], "faces_right": sum(
                 1 for i, n in v["faces"].items() if n == expected[i])}
    for ap in ("ap-2", "ap-3"):  # empty: disabled at once
        client.drain_node(ap, reason="bench: only the cloud is left")
    stream, _ = frames(tmp, args.moves_frames, "m")
    stop = os.path.join(tmp, "stop-camera")
    argv = ["ip", "netns", "exec", netns, sys.executable,
            os.path.join(SAMPLE, "camera.py"), "--url", url, "--frames", stream,
            "--every", str(args.every), "--timeout", "900", "--stop-file", stop,
            "--timeline"]
    cam = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    marks = []
    try:
        t0 = time.monotonic()
        time.sleep(args.phase)
        start = time.monotonic()
        res = client.drain_node("ap-1", reason="bench: the access point goes away")
        ops = [client.wait(o["id"], 600) for o in res["operations"]]
        if any(o["state"] != "SUCCEEDED" for o in ops) or \
                client.service(name)["home_node"] != "cloud-1":
            raise RuntimeError("drain of ap-1: %s" % ops)
        op_end = time.monotonic()
        # the move as the camera sees it: until the job runs again
        end, restored = wait_job_running(netns, url)
        marks.append({"move": "ap-1 -> cloud-1 (ap-1 drained)", "start": start,
                      "operation_end": op_end, "end": end, "restored_from": restored,
                      "step": ops[0]["step"]})
        time.sleep(args.phase)
        enabled = time.monotonic()
        client.enable_node("ap-1")
        back = None
        while time.monotonic() < enabled + 600:
            found = [o for o in client.operations() if o["service"] == name
                     and o["kind"] == "migrate"]
            if found and back is None:
                back = time.monotonic()
            if found and found[0]["state"] in ("SUCCEEDED", "FAILED", "ROLLED_BACK"):
                break
            time.sleep(0.25)
        if not found or found[0]["state"] != "SUCCEEDED" or \
                client.service(name)["home_node"] != "ap-1":
            raise RuntimeError("no return to ap-1: %s" % found)
        op_end = time.monotonic()
        end, restored = wait_job_running(netns, url)
        marks.append({"move": "cloud-1 -> ap-1 (the manager's return)", "start": back,
                      "operation_end": op_end, "end": end, "restored_from": restored,
                      "enabled": enabled, "step": found[0]["step"]})
        time.sleep(args.phase)
    finally:
        open(stop, "w").close()
        out, err = cam.communicate(timeout=1200)
        for ap in ("ap-1", "ap-2", "ap-3"):
            client.enable_node(ap)
        stats = gateway_stats(netns, url)
        client.wait(client.delete_service(name)["operation"]["id"], 300)
    if cam.returncode:
        raise RuntimeError("camera failed: " + err[-2000:])
    cam = json.loads(out)
    timeline = [[round(t - t0, 3), lat, tm] for t, lat, tm in cam.pop("timeline")]
    for m in marks:
        for k in ("start", "end", "enabled", "operation_end"):
            if k in m:
                m[k] = round(m[k] - t0, 2)
        m["seconds"] = round(m["end"] - m["start"], 2)
    return {"frames": cam["frames"], "results": cam["results"],
            "post_retries": cam["post_retries"], "video": video,
            "gateway_stats": stats, "every_s": args.every, "phase_s": args.phase,
            "moves": marks, "phases": phases(timeline, marks),
            "timeline": timeline}


# A move is over for the camera user once its backlog has drained: at most
# this many frames sent and not yet answered (1 s of the stream at 0.2 s;
# in steady state 1-3 are, on the edge and on the cloud alike).
CAUGHT_UP_IN_FLIGHT = 5


def caught_up(timeline, after):
    """When the frames that queued in the gateway during a move have been
    answered: the send time of the first frame sent from ``after`` (the job
    running again) on at which at most CAUGHT_UP_IN_FLIGHT frames were out
    (sent, detection not yet read), from the timeline's send times and
    latencies; None if never."""
    answered = [(t, t + lat / 1000.0 if lat is not None else float("inf"))
                for t, lat, _ in timeline]
    for t, _ in answered:
        if t >= after and sum(1 for s, a in answered
                              if s <= t < a) <= CAUGHT_UP_IN_FLIGHT:
            return t
    return None


def phases(timeline, marks):
    """Each frame's latency by phase: before the moves, during each move
    (its start until its backlog drained: :func:`caught_up`), and on each
    placement after; each move gets ``caught_up`` (s) and
    ``caught_up_s`` (from its start)."""
    for m in marks:
        c = caught_up(timeline, m["end"])
        m["caught_up"] = round(c, 2) if c is not None else None
        m["caught_up_s"] = round(c - m["start"], 2) if c is not None else None
    (d0, d1), (r0, r1) = [(m["start"], m["caught_up"] or float("inf")) for m in marks]
    phase = {"edge_before": [x[1] for x in timeline if x[0] < d0],
             "during_offload": [x[1] for x in timeline if d0 <= x[0] < d1],
             "cloud": [x[1] for x in timeline if d1 <= x[0] < r0],
             "during_return": [x[1] for x in timeline if r0 <= x[0] < r1],
             "edge_after": [x[1] for x in timeline if x[0] >= r1]}
    return {k: percentiles(v) for k, v in phase.items()}


def host_floor(tmp, args):
    """The host's video and live stream (no container, no PaaS): the floor."""
    live = argparse.Namespace(**dict(vars(args), live_frames=args.floor_frames))
    return host_run(tmp, live)


def quiet(limit=3.0, wait=600):
    """Wait (up to ``wait`` s) for the 1-min load to drop below ``limit``
    (TEAM.md: before a latency benchmark); returns what was seen."""
    t0 = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < wait:
        time.sleep(10)
    load = os.getloadavg()[0]
    return {"loadavg_1min": round(load, 2), "below": load < limit, "limit": limit,
            "waited_s": round(time.monotonic() - t0)}


def main_moves(args, tmp):
    waited = quiet(wait=args.quiet_wait)
    t_all = time.monotonic()
    load_start = os.getloadavg()
    host_all = host_floor(tmp, args)
    floor = host_all["live"]
    with bench_edge(tmp, args, node_heartbeat_timeout=6) as b:
        moves = moves_run(b, tmp, args)
        shaping = common.shaping_note(b.status)
    load_end = os.getloadavg()
    host = percentiles(floor["latency_ms"])
    hv, ev = host_all["video"], moves["video"]
    summary = {
        **header("stream-moves", args, "the host floor ran just before the edge, in "
                 "this run", shaping),
        "topology": "edge-topology-cloud.yaml, access points as Pi 4 2 GB "
                    "(capacity %s); cloud-1 30 ms one-way behind ap-1" % ap_capacity(args),
        "flink": dict({"taskmanagers": 1}, **flink_limits(args)),
        "host_floor": dict(host, every_s=args.every, video=hv),
        # the paper's Fig. 5: processing time of one video, PaaS edge / host
        "video_frames": hv["frames"],
        "video_host_s": hv["seconds"], "video_edge_s": ev["seconds"],
        "video_host_fps": hv["fps"], "video_edge_fps": ev["fps"],
        "overhead_ratio_edge_vs_host": ratio(ev["seconds"], hv["seconds"]),
        "target_ratio": 1.10,
        "loadavg_1min_at_start": round(load_start[0], 2),
        "loadavg_1min_at_end": round(load_end[0], 2),
        "waited_for_quiet": waited,
        **common.load_note(load_start[0], load_end[0]),
        "results": moves,
        "seconds": round(time.monotonic() - t_all, 1),
    }
    write_moves(summary, args.quick)


def write_moves(summary, quick):
    """The phase figures from the run's results (also for ``--from-json``:
    a recorded run summarised again by this code), the JSON and the plot."""
    moves = summary["results"]
    host = {k: summary["host_floor"][k] for k in ("p50_ms", "p95_ms")}
    ph = moves["phases"] = phases(moves["timeline"], moves["moves"])
    summary.update({
        "caught_up_in_flight": CAUGHT_UP_IN_FLIGHT,
        "edge_p50_ms": ph["edge_before"]["p50_ms"],
        "edge_p95_ms": ph["edge_before"]["p95_ms"],
        "edge_after_p50_ms": ph["edge_after"]["p50_ms"],
        "edge_after_p95_ms": ph["edge_after"]["p95_ms"],
        "cloud_p50_ms": ph["cloud"]["p50_ms"],
        "cloud_p95_ms": ph["cloud"]["p95_ms"],
        "host_p50_ms": host["p50_ms"], "host_p95_ms": host["p95_ms"],
        "edge_p50_vs_host": ratio(ph["edge_before"]["p50_ms"], host["p50_ms"]),
        "cloud_p50_vs_host": ratio(ph["cloud"]["p50_ms"], host["p50_ms"]),
        "cloud_p95_vs_host": ratio(ph["cloud"]["p95_ms"], host["p95_ms"]),
        "edge_p95_vs_host": ratio(ph["edge_before"]["p95_ms"], host["p95_ms"]),
        "edge_after_p50_vs_host": ratio(ph["edge_after"]["p50_ms"], host["p50_ms"]),
        "restored_from_savepoint": [bool(m.get("restored_from"))
                                    for m in moves["moves"]],
        "offload_s": moves["moves"][0]["seconds"],
        "return_s": moves["moves"][1]["seconds"],
        "offload_caught_up_s": moves["moves"][0]["caught_up_s"],
        "return_caught_up_s": moves["moves"][1]["caught_up_s"],
        "frames_lost": moves["frames"] - moves["results"],
        "duplicates_dropped": (moves["gateway_stats"] or {}).get("duplicates_dropped"),
    })

    def plot(ax):
        tl = moves["timeline"]
        ax.plot([x[0] for x in tl if x[1] is not None],
                [x[1] for x in tl if x[1] is not None], ".", ms=3,
                label="PaaS: frame sent -> detection read (ap-1's camera user)")
        for m, color in zip(moves["moves"], ("tab:red", "tab:green")):
            ax.axvspan(m["start"], m["end"], color=color, alpha=0.25,
                       label="%s: job runs again after %.0f s" % (m["move"], m["seconds"]))
            if m.get("caught_up"):
                ax.axvspan(m["end"], m["caught_up"], color=color, alpha=0.1,
                           label="... its backlog answered after %.0f s"
                           % m["caught_up_s"])
        ax.axhline(host["p50_ms"], color="k", ls="--",
                   label="host floor p50 %.0f ms (no container, no PaaS)" % host["p50_ms"])
        ax.set_yscale("log")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("detection latency (ms)")
        ax.set_title("detection latency p50: edge %s / cloud %s / edge %s ms (host %s);"
                     "\nvideo time PaaS edge / host = %s" % (
                         ph["edge_before"]["p50_ms"], ph["cloud"]["p50_ms"],
                         ph["edge_after"]["p50_ms"], host["p50_ms"],
                         summary["overhead_ratio_edge_vs_host"]), fontsize=9)
        ax.legend(fontsize=6)
    common.write("stream-moves" + ("-quick" if quick else ""), summary, plot)


def header(name, args, floor, shaping):
    return {"bench": name, "quick": args.quick,
            "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
            "machine": common.machine(),
            "floor": floor,
            "latency_shaping": shaping}


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer frames (CI-sized)")
    p.add_argument("--frames", type=int, default=300, help="frames in the video")
    p.add_argument("--live-frames", type=int, default=100)
    p.add_argument("--every", type=float, default=0.2,
                   help="live stream: seconds between frames")
    p.add_argument("--moves", action="store_true",
                   help="instead: latency over time as the job moves edge -> cloud "
                        "-> edge (bench/results/stream-moves*.json)")
    p.add_argument("--phase", type=float, default=40.0,
                   help="--moves: seconds on each placement before the next move")
    p.add_argument("--floor-frames", type=int, default=100,
                   help="--moves: frames of the host floor's live stream")
    p.add_argument("--from-json", metavar="FILE",
                   help="--moves: summarise a recorded run (its results' timeline and "
                        "moves) again with this code, and write its JSON and plot")
    p.add_argument("--instance-cpus", type=float, default=float(CORES),
                   help="cpus of each flink instance (JobManager, TaskManager) of "
                        "the PaaS runs ([manager] flink_instance_cpus); default: this "
                        "machine's cores, which the host run has (1.0: the "
                        "Pi-sized default, half the host's CPU on 2 cores)")
    p.add_argument("--quiet-wait", type=float, default=600,
                   help="seconds to wait at most for the 1-min load to drop "
                        "below 3 (--moves) or 4 first (0: measure at once; the load "
                        "is recorded)")
    p.add_argument("--waited-before", type=float, default=0,
                   help="seconds already waited for a quiet machine (e.g. before "
                        "taking an edge slot), recorded with the wait")
    args = p.parse_args()
    if args.quick:
        args.frames, args.live_frames = 60, 30
        args.phase, args.floor_frames = 20.0, 50
    # enough frames for the phases and two moves of up to ~3 min each
    args.moves_frames = int((3 * args.phase + 400) / args.every)
    if args.moves and args.from_json:
        with open(args.from_json) as f:
            summary = json.load(f)
        summary["summarised_again"] = (
            "phases and moves' caught_up recomputed from this run's recorded timeline "
            "by bench/stream.py --from-json after the run")
        return write_moves(summary, summary["quick"])
    if not (flink_image.ready(flink_image.DEFAULT_DIR) and os.path.exists(FLINK_PY)):
        sys.exit("needs the flink image (mec-conpaas-edge build-image --flink) and "
                 ".venv-flink (tools/install-deps.sh)")
    tmp = tempfile.mkdtemp(prefix="mec-stream-")
    try:
        if args.moves:
            return main_moves(args, tmp)
        waited = common.wait_quiet(limit=4.0, max_wait=args.quiet_wait,
                                   waited_before=args.waited_before)
        t_all = time.monotonic()
        results = {}
        with bench_edge(tmp, args) as b:
            status = b.status
            results["host"] = host_run(tmp, args)
            results["edge"] = paas_run(b.edge, b.client, tmp, args, "ap-1", "e")
            results["cloud"] = paas_run(b.edge, b.client, tmp, args, "cloud-1", "c")
    finally:
        subprocess.run(["rm", "-rf", tmp])
    h, e, c = (results[k]["video"]["seconds"] for k in ("host", "edge", "cloud"))
    summary = {
        **header("stream", args, "host, edge and cloud ran one after the other in "
                 "this run", common.shaping_note(status)),
        "flink": dict({"taskmanagers": 1, "parallelism": 1}, **flink_limits(args)),
        "topology": "edge-topology-cloud.yaml, access points' capacity %s, cloud-1 "
                    "30 ms one-way behind ap-1; for the cloud run the access points "
                    "were drained (the manager would bring the service back)"
                    % ap_capacity(args),
        "overhead_ratio_edge_vs_host": round(e / h, 3),
        "overhead_ratio_cloud_vs_host": round(c / h, 3),
        "target_ratio": 1.10,
        **waited, "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        **common.load_note(waited["loadavg_at_start"][0], os.getloadavg()[0], 4.0),
        "results": results,
        "seconds": round(time.monotonic() - t_all, 1),
    }

    def plot(ax):
        for k, color in (("host", "tab:green"), ("edge", "tab:blue"),
                         ("cloud", "tab:red")):
            lat = results[k]["live"]["latency_ms"]
            ax.plot(range(len(lat)), lat, label="%s: %.1f s/video, %.1f fps" % (
                k, results[k]["video"]["seconds"], results[k]["video"]["fps"]),
                color=color)
        ax.set_xlabel("frame (sorted by latency)")
        ax.set_ylabel("detection latency seen by the camera user (ms)")
        ax.set_title("face recognition: PaaS edge / host = %.2f, cloud / host = %.2f"
                     % (e / h, c / h))
        ax.legend()
    common.write("stream" + ("-quick" if args.quick else ""), summary, plot)


if __name__ == "__main__":
    main()
