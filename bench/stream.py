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
TaskManager (parallelism 1); the baseline's mini cluster is one JVM.

    sudo .venv/bin/python bench/stream.py [--quick]
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

from bench import common  # noqa: E402
from mec_conpaas.agents.service import flink  # noqa: E402
from mec_conpaas.cli import client as client_mod  # noqa: E402
from mec_conpaas.edge import cluster  # noqa: E402
from mec_conpaas.edge import flink_image  # noqa: E402
from mec_conpaas.manager import topology as topology_mod  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "mec_conpaas", "samples", "facedetect")
FLINK_PY = os.path.join(ROOT, ".venv-flink", "bin", "python")
CLOUD = os.path.join(os.path.dirname(topology_mod.DEFAULT), "edge-topology-cloud.yaml")


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


def flink_limits():
    """What each JobManager/TaskManager container got (the options' defaults,
    which the bench edge keeps)."""
    from mec_conpaas.conf import manager as manager_conf
    opts = {o.name: o.default for o in manager_conf.manager_opts}
    return {"instance_memory_mb": opts["flink_instance_memory_mb"],
            "instance_cpus": opts["flink_instance_cpus"],
            "memory": flink.MEMORY}


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
    name = "stream-" + tag
    op = client.create_service("flink", name, node=node, count=2,
                               bundle=os.path.join(SAMPLE, "job.py"))
    t0 = time.monotonic()
    res = client.wait(op["operation"]["id"], 600)
    if res["state"] != "SUCCEEDED":
        raise RuntimeError("create on %s: %s" % (node, res))
    created = time.monotonic() - t0
    svc = client.service(name)
    placed = sorted({i["node"] for i in svc["instances"]})
    if placed != [node]:
        client.wait(client.delete_service(name)["operation"]["id"], 300)
        raise RuntimeError("%s landed on %s, not %s" % (name, placed, node))
    ap_addr, _ = edge.net.client_addresses("ap-1")
    try:
        out = measure("http://%s:%d" % (ap_addr, svc["port"]), tmp, args, tag,
                      netns=edge.net.client_netns("ap-1"))
        out["create_s"] = round(created, 1)
        out["nodes"] = placed
        return out
    finally:
        client.wait(client.delete_service(name)["operation"]["id"], 300)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer frames (CI-sized)")
    p.add_argument("--frames", type=int, default=300, help="frames in the video")
    p.add_argument("--live-frames", type=int, default=100)
    p.add_argument("--every", type=float, default=0.2,
                   help="live stream: seconds between frames")
    args = p.parse_args()
    if args.quick:
        args.frames, args.live_frames = 60, 30
    if not (flink_image.ready(flink_image.DEFAULT_DIR) and os.path.exists(FLINK_PY)):
        sys.exit("needs the flink image (mec-conpaas-edge build-image --flink) and "
                 ".venv-flink (tools/install-deps.sh)")
    tmp = tempfile.mkdtemp(prefix="mec-stream-")
    state = tempfile.mkdtemp(prefix="mec-bench-")
    edge = cluster.Edge(state, CLOUD, prefix="mbs-", manager_port=9697,
                        manager_opts={"health_timeout": 120},
                        log=lambda m: print("edge:", m, file=sys.stderr),
                        user_credentials=False)
    t_all = time.monotonic()
    results = {}
    try:
        status = edge.up()
        client = client_mod.Client(edge.manager_url(),
                                   open(edge.path("admin-token")).read().strip())
        results["host"] = host_run(tmp, args)
        results["edge"] = paas_run(edge, client, tmp, args, "ap-1", "e")
        results["cloud"] = paas_run(edge, client, tmp, args, "cloud-1", "c")
    finally:
        edge.down(quiet=True)
        subprocess.run(["rm", "-rf", state, tmp])
    h, e, c = (results[k]["video"]["seconds"] for k in ("host", "edge", "cloud"))
    summary = {
        "bench": "stream", "quick": args.quick,
        "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        "machine": common.machine(),
        "machine_shared": "yes: other engineers' builds and tests ran at the same "
                          "time on these 2 cores; host, edge and cloud ran one "
                          "after the other in this run",
        "latency_shaping": common.shaping_note(status),
        "flink": dict({"taskmanagers": 1, "parallelism": 1}, **flink_limits()),
        "overhead_ratio_edge_vs_host": round(e / h, 3),
        "overhead_ratio_cloud_vs_host": round(c / h, 3),
        "target_ratio": 1.10,
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
