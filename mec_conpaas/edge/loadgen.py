"""Wi-Fi users' clients: one request every INTERVAL through an endpoint.

Runs inside a client namespace (``ip netns exec``); stops when the stop
file appears or after ``--max-seconds``, and writes every request's
outcome as JSON, so tests and benchmarks judge failures, gaps and latency
from real traffic.  ``--clients N`` runs N such users at once, each
waiting for its answer before the next request (a closed loop: the load
never exceeds N requests in flight, so it is bounded whatever the server
does).
"""
import argparse
import http.client
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse


def one(url, timeout):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path or "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body.decode("utf-8", "replace")
    finally:
        conn.close()


def user(args, results, ready):
    """One closed-loop user until the stop file or the time limit."""
    t_end = time.monotonic() + args.max_seconds
    nxt = time.monotonic()
    while not os.path.exists(args.stop_file) and time.monotonic() < t_end:
        t0 = time.monotonic()
        rec = {"start": t0}
        try:
            status, body = one(args.url, args.timeout)
            rec.update(status=status, ok=status == 200)
            if status == 200:
                try:
                    data = json.loads(body)
                    rec.update(hits=data.get("hits"), instance=data.get("instance"))
                except ValueError:
                    pass
            else:
                rec["error"] = body[:200]
        except Exception as e:  # every failure counts, whatever its kind
            rec.update(ok=False, error="%s: %s" % (type(e).__name__, e))
        rec["end"] = time.monotonic()
        results.append(rec)
        if len(results) >= 5:
            ready()
        nxt += args.interval
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            nxt = time.monotonic()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=1,
                   help="concurrent users, each a closed loop")
    p.add_argument("--stop-file", required=True)
    p.add_argument("--ready-file")
    p.add_argument("--out", required=True)
    p.add_argument("--max-seconds", type=float, default=600)
    args = p.parse_args(argv)
    results = []
    once = threading.Lock()

    def ready():
        if args.ready_file and once.acquire(blocking=False):
            open(args.ready_file, "w").close()
    users = [threading.Thread(target=user, args=(args, results, ready), daemon=True)
             for _ in range(args.clients)]
    for t in users:
        t.start()
    for t in users:
        t.join()
    results.sort(key=lambda r: r["end"])
    with open(args.out, "w") as f:
        json.dump(results, f)


def percentile(values, q):
    """Nearest-rank percentile (no interpolation: a value that happened)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def summarize(results):
    ok = [r for r in results if r["ok"]]
    gaps = [b["end"] - a["end"] for a, b in zip(ok, ok[1:])]
    # Latency of every request, failed ones included: an error after a
    # 5 s timeout is 5 s a user waited.
    latency = [1000 * (r["end"] - r["start"]) for r in results]
    p50, p99 = percentile(latency, 50), percentile(latency, 99)
    return {"requests": len(results), "failed": len(results) - len(ok),
            "max_gap_ms": round(1000 * max(gaps), 1) if gaps else None,
            "p50_ms": round(p50, 1) if latency else None,
            "p99_ms": round(p99, 1) if latency else None,
            "errors": sorted({r.get("error", "")[:120] for r in results
                              if not r["ok"]})[:5]}


SLOW_APP = '''\
"""A web app with {workers} worker slots: each request holds one for
{hold} s ({how}); more requests at once wait for a slot."""
import json
import os
import threading
import time

SLOTS = threading.BoundedSemaphore({workers})


def application(environ, start_response):
    if environ.get("HTTP_X_MEC_HEALTH") or environ["PATH_INFO"] == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    with SLOTS:
        if {cpu}:
            start = time.thread_time()
            while time.thread_time() - start < {hold}:
                pass
        else:
            time.sleep({hold})
    body = json.dumps({{"instance": os.environ.get("MY_IP")}}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def slow_web_bundle(path, workers, hold, cpu=False):
    """A web bundle whose instances serve ``workers`` requests at once, each
    for ``hold`` seconds: an instance a few users saturate.  ``cpu``: the
    request computes for ``hold`` s of CPU time instead of waiting (its
    instance's CPU quota, not its slots, is then the limit)."""
    data = SLOW_APP.format(workers=workers, hold=hold, cpu=bool(cpu),
                           how="computing" if cpu else "waiting").encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("wsgi.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


class ClientLoad:
    """The loadgen running as the Wi-Fi user(s) of one access point."""

    def __init__(self, edge, ap, port, interval=0.01, clients=1, netns=None, url=None):
        """``netns``/``url``: another user's namespace and endpoint (a
        moving user sends to network.user_endpoint wherever it is)."""
        self.dir = tempfile.mkdtemp(prefix="mec-load-")
        self.stop_file = os.path.join(self.dir, "stop")
        self.out = os.path.join(self.dir, "out.json")
        ready = os.path.join(self.dir, "ready")
        ap_addr, _ = edge.net.client_addresses(ap) if ap else (None, None)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns or edge.net.client_netns(ap), sys.executable,
             "-m", "mec_conpaas.edge.loadgen", "--url",
             url or "http://%s:%d/" % (ap_addr, port),
             "--interval", str(interval), "--clients", str(clients),
             "--stop-file", self.stop_file,
             "--ready-file", ready, "--out", self.out])
        deadline = time.monotonic() + 30
        while not os.path.exists(ready):
            assert self.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)

    def stop(self):
        open(self.stop_file, "w").close()
        self.proc.wait(30)
        with open(self.out) as f:
            results = json.load(f)
        shutil.rmtree(self.dir, ignore_errors=True)
        return results


if __name__ == "__main__":
    main()
