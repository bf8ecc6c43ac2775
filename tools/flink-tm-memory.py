#!/usr/bin/env python3
"""The smallest Flink TaskManager that runs the face-recognition job.

Runs a standalone Flink session cluster on loopback from .venv-flink (the
same distribution and settings as the flink service's instances:
agents/service/flink.py's ``write_conf``), one TaskManager per try with a
smaller ``taskmanager.memory.process.size``, feeds the job frames through
the same gateway, and records whether every frame got its result and the
peak memory of the TaskManager (its JVM plus the job's Python worker,
which Flink runs beside it).  Prints one JSON object; README "Flink and
the far cloud" has the result.  Loopback only; ~1 min per size.

    .venv/bin/python tools/flink-tm-memory.py [--sizes 576,448,384,320]
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mec_conpaas.agents.service import flink  # noqa: E402

SAMPLE = os.path.join(ROOT, "mec_conpaas", "samples", "facedetect")
VENV = os.path.join(ROOT, ".venv-flink")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mb(pid):
    """RSS of a process and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open("/proc/%d/task/%d/children" % (p, p)) as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return total // 1024


def attempt(home, size_mb, frames, tmp, timeout):
    conf = os.path.join(tmp, "conf-%d" % size_mb)
    rest, rpc = free_port(), free_port()
    py = os.path.join(VENV, "bin", "python")
    flink.write_conf(home, conf, {
        "jobmanager.rpc.address": "127.0.0.1", "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.rpc.port": str(rpc), "rest.port": str(rest),
        "rest.address": "127.0.0.1", "rest.bind-address": "127.0.0.1",
        "blob.server.port": str(free_port()),
        "taskmanager.host": "127.0.0.1", "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.rpc.port": str(free_port()),
        "taskmanager.data.port": str(free_port()),
        "taskmanager.resource-id": "tm-%d" % size_mb,
        "python.executable": py, "python.client.executable": py,
        "taskmanager.memory.process.size": "%dm" % size_mb})
    env = dict(os.environ, FLINK_CONF_DIR=conf, FLINK_HOME=home,
               PATH=os.path.join(VENV, "bin") + ":" + os.environ["PATH"],
               FLINK_LOG_DIR=os.path.join(tmp, "log-%d" % size_mb))
    http_port, feed_port = free_port(), free_port()
    gw = flink.Gateway(os.path.join(tmp, "gw-%d" % size_mb))
    httpd = flink.serve_gateway(gw, "127.0.0.1", http_port, feed_port)
    log = open(os.path.join(tmp, "cluster-%d.log" % size_mb), "w")
    procs = [subprocess.Popen([os.path.join(home, "bin", script), "start-foreground"],
                              env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
             for script in ("jobmanager.sh", "taskmanager.sh")]
    out = {"taskmanager_process_mb": size_mb}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/overview" % rest,
                                            timeout=2) as r:
                    if json.loads(r.read())["taskmanagers"] >= 1:
                        break
            except OSError:
                pass
            if procs[1].poll() is not None:
                out.update(ok=False, error="TaskManager exited %s" % procs[1].returncode)
                return out
            time.sleep(1)
        jenv = dict(env, MEC_FLINK_FEED="127.0.0.1:%d" % feed_port,
                    MEC_FLINK_SINK="http://127.0.0.1:%d/results" % http_port)
        subprocess.run([os.path.join(home, "bin", "flink"), "run", "-d", "-m",
                        "127.0.0.1:%d" % rest, "-py", os.path.join(SAMPLE, "job.py")],
                       env=jenv, stdout=log, stderr=subprocess.STDOUT, timeout=300)
        gw.add_frames(frames)
        peak, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline and gw.stats()["results"] < len(frames):
            peak = max(peak, tree_rss_mb(procs[1].pid))
            if procs[1].poll() is not None:
                break
            time.sleep(0.5)
        stats = gw.stats()
        out.update(ok=stats["results"] == len(frames) and procs[1].poll() is None,
                   results=stats["results"], frames=len(frames),
                   peak_rss_mb_jvm_and_python=peak)
        return out
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        httpd.shutdown()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="576,448,384,320,256")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--timeout", type=float, default=180)
    args = p.parse_args()
    home = subprocess.run([os.path.join(VENV, "bin", "python"), "-c",
                           "import os,pyflink;print(os.path.dirname(pyflink.__file__))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="mec-flink-mem-")
    made = os.path.join(tmp, "frames")
    subprocess.run([os.path.join(VENV, "bin", "python"), os.path.join(SAMPLE, "frames.py"),
                    str(args.frames), made], check=True)
    with open(made) as f:
        frames = f.read().splitlines()
    runs = []
    for size in (int(s) for s in args.sizes.split(",")):
        runs.append(attempt(home, size, frames, tmp, args.timeout))
        print(json.dumps(runs[-1]), file=sys.stderr)
    ok = [r["taskmanager_process_mb"] for r in runs if r.get("ok")]
    print(json.dumps({"smallest_ok_mb": min(ok) if ok else None, "runs": runs,
                      "settings": flink.MEMORY, "logs": tmp}))


if __name__ == "__main__":
    main()
