"""Wi-Fi users' clients: requests through an endpoint, judged from real traffic.

Runs inside a client namespace (``ip netns exec``); stops when the stop
file appears or after ``--max-seconds``, and writes every request's
outcome as JSON, so tests and benchmarks judge failures, gaps and latency
from what a user saw.

Two kinds of load:

open loop (the default)
    one user whose requests *start* on a fixed schedule, one every
    ``--interval`` (10 ms), whatever earlier ones are doing: a slow answer
    cannot delay, and so hide, the requests behind it (a sequential client
    sends nothing while it waits, so a stall shorter than its own round
    trip is invisible to it).  Latency is counted from the scheduled start
    (a late start is time the user waited too), and how late starts really
    were is reported, so a client that could not keep its schedule on a
    loaded machine says so.  ``--keepalive`` sends the requests over
    persistent HTTP/1.1 connections, as browsers do: each request takes an
    idle connection, or opens one if none is idle (never waiting for one);
    without it every request opens and closes its own connection.  A
    request that fails on a reused connection is not retried: it counts.
``--clients N`` (N > 1)
    N users each waiting for its answer before the next request (a closed
    loop: never more than N requests in flight, so the load is bounded
    whatever the server does); what overload benchmarks want.
"""
import argparse
import collections
import concurrent.futures
import http.client
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse


def one(url, timeout):
    """One request on a connection of its own (closed after it)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path or "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body.decode("utf-8", "replace")
    finally:
        conn.close()


def failure_kind(exc):
    """What a user would call the failure: a short, countable name."""
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed-without-answer"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken-pipe"
    if isinstance(exc, OSError) and exc.errno:
        return "os-error-%d" % exc.errno
    return type(exc).__name__


class Connections:
    """Idle persistent connections to one endpoint (keep-alive), or none.

    ``get`` never waits: with no idle connection it opens a new one, so a
    request starts on schedule whatever the others are doing."""

    def __init__(self, url, timeout, keepalive, method="GET"):
        u = urllib.parse.urlsplit(url)
        self.method = method
        self.host, self.port, self.path = u.hostname, u.port, u.path or "/"
        self.timeout = timeout
        self.keepalive = keepalive
        self.idle = collections.deque()
        self.lock = threading.Lock()
        self.opened = 0

    def get(self):
        if self.keepalive:
            with self.lock:
                if self.idle:
                    return self.idle.pop(), True
        with self.lock:
            self.opened += 1
        return http.client.HTTPConnection(self.host, self.port,
                                          timeout=self.timeout), False

    def put(self, conn):
        with self.lock:
            self.idle.append(conn)

    def close(self):
        with self.lock:
            while self.idle:
                self.idle.pop().close()

    def request(self, rec):
        """Send one request, fill ``rec`` with its outcome."""
        conn, reused = self.get()
        rec["reused"] = reused
        keep = False
        try:
            # A POST carries a small body, sent apart from its headers (as
            # http.client does): a proxy that replays a request must have
            # buffered all of it.
            conn.request(self.method, self.path,
                         body=b'{"seq": %d}' % rec.get("seq", 0)
                         if self.method == "POST" else None,
                         headers={"Connection": "keep-alive" if self.keepalive
                                  else "close"})
            resp = conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
            keep = self.keepalive and not resp.will_close
            rec.update(status=resp.status, ok=resp.status == 200)
            if resp.status == 200:
                try:
                    data = json.loads(body)
                    rec.update(hits=data.get("hits"), instance=data.get("instance"))
                except ValueError:
                    pass
            else:
                rec.update(kind="http-%d" % resp.status, error=body[:200])
        except Exception as e:  # every failure counts, whatever its kind
            rec.update(ok=False, kind=failure_kind(e),
                       error="%s: %s" % (type(e).__name__, e))
        finally:
            rec["end"] = time.monotonic()
            if keep:
                self.put(conn)
            else:
                conn.close()
        return rec


def open_loop(args, results, ready):
    """Start a request every ``interval`` on schedule, each in its own
    thread, until the stop file or the time limit; then wait for the
    requests in flight (each ends by ``timeout`` at the latest)."""
    conns = Connections(args.url, args.timeout, args.keepalive, args.method)
    in_flight = int(math.ceil(args.timeout / max(args.interval, 0.001))) + 16
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(in_flight, 1024))

    def run(rec):
        rec["sent"] = time.monotonic()
        results.append(conns.request(rec))
        if len(results) >= 5:
            ready()

    t0 = time.monotonic()
    t_end = t0 + args.max_seconds
    n = 0
    while True:
        due = t0 + n * args.interval
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        if due >= t_end or os.path.exists(args.stop_file):
            break
        pool.submit(run, {"start": due, "seq": n})
        n += 1
    pool.shutdown(wait=True)
    conns.close()
    return {"connections_opened": conns.opened}


def closed_loop_user(args, results, ready):
    """One closed-loop user until the stop file or the time limit."""
    conns = Connections(args.url, args.timeout, args.keepalive, args.method)
    t_end = time.monotonic() + args.max_seconds
    nxt = time.monotonic()
    while not os.path.exists(args.stop_file) and time.monotonic() < t_end:
        t0 = time.monotonic()
        results.append(conns.request({"start": t0, "sent": t0}))
        if len(results) >= 5:
            ready()
        nxt += args.interval
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            nxt = time.monotonic()
    conns.close()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--interval", type=float, default=0.01,
                   help="seconds between request starts (open loop), or each "
                        "closed-loop user's pause between its requests")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--keepalive", action="store_true",
                   help="persistent HTTP/1.1 connections (else one per request)")
    p.add_argument("--method", choices=("GET", "POST"), default="GET",
                   help="POST: each request carries a small body (not "
                        "idempotent: must run once across a migration)")
    p.add_argument("--clients", type=int, default=1,
                   help="more than 1: that many closed-loop users instead of "
                        "the open-loop schedule")
    p.add_argument("--stop-file", required=True)
    p.add_argument("--ready-file")
    p.add_argument("--out", required=True)
    p.add_argument("--max-seconds", type=float, default=600)
    args = p.parse_args(argv)
    if args.clients <= 1 and args.interval <= 0:
        p.error("an open loop needs --interval > 0 (or --clients N for N "
                "closed-loop users)")
    results = []
    once = threading.Lock()

    def ready():
        if args.ready_file and once.acquire(blocking=False):
            open(args.ready_file, "w").close()
    if args.clients > 1:
        users = [threading.Thread(target=closed_loop_user,
                                  args=(args, results, ready), daemon=True)
                 for _ in range(args.clients)]
        for t in users:
            t.start()
        for t in users:
            t.join()
    else:
        open_loop(args, results, ready)
    results.sort(key=lambda r: r["end"])
    with open(args.out, "w") as f:
        json.dump(results, f)


def percentile(values, q):
    """Nearest-rank percentile (no interpolation: a value that happened)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def _ms(value):
    return None if value is None else round(1000 * value, 1)


def summarize(results):
    """What the user saw: failures by kind, the longest time with no
    successful answer, latency (from each request's scheduled start, failed
    ones included: an error after a 5 s timeout is 5 s a user waited), the
    send rate achieved and how late starts were."""
    ok = sorted((r for r in results if r["ok"]), key=lambda r: r["end"])
    gaps = [b["end"] - a["end"] for a, b in zip(ok, ok[1:])]
    latency = [r["end"] - r["start"] for r in results]
    late = [r.get("sent", r["start"]) - r["start"] for r in results]
    starts = sorted(r.get("sent", r["start"]) for r in results)
    span = starts[-1] - starts[0] if len(starts) > 1 else 0
    kinds = collections.Counter(r.get("kind") or "error" for r in results
                                if not r["ok"])
    return {"requests": len(results), "failed": len(results) - len(ok),
            "failures_by_kind": dict(sorted(kinds.items())),
            "max_gap_ms": _ms(max(gaps)) if gaps else None,
            "max_gap_at": round(ok[gaps.index(max(gaps))]["end"], 3) if gaps else None,
            "p50_ms": _ms(percentile(latency, 50)), "p95_ms": _ms(percentile(latency, 95)),
            "p99_ms": _ms(percentile(latency, 99)), "max_ms": _ms(max(latency, default=None)),
            "send_rate_per_s": round((len(starts) - 1) / span, 1) if span else None,
            "start_late_ms": {"p50": _ms(percentile(late, 50)),
                              "p99": _ms(percentile(late, 99)),
                              "max": _ms(max(late, default=None))},
            "reused_connections": sum(1 for r in results if r.get("reused")),
            "errors": sorted({r.get("error", "")[:120] for r in results
                              if not r["ok"]})[:5]}


# The sample counter, plus a journal line per request: state that keeps
# changing while a migration copies it (bench/migrate.py, test_migrate*).
JOURNAL_APP = '''\
import fcntl
import json
import os
import time

DIR = os.environ.get("MEC_STATE_DIR", "/var/lib/service")


def application(environ, start_response):
    if environ.get("HTTP_X_MEC_HEALTH") or environ["PATH_INFO"] == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    with open(os.path.join(DIR, "hits.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(os.path.join(DIR, "hits")) as f:
                hits = int(f.read() or 0)
        except (OSError, ValueError):
            hits = 0
        hits += 1
        with open(os.path.join(DIR, "hits.tmp"), "w") as f:
            f.write(str(hits))
        os.replace(os.path.join(DIR, "hits.tmp"), os.path.join(DIR, "hits"))
        with open(os.path.join(DIR, "journal"), "a") as f:
            f.write("%d %.6f %s\\n" % (hits, time.time(), "x" * 1000))
    body = json.dumps({"hits": hits, "instance": os.environ.get("MY_IP")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''
JOURNAL_RESTORE = ("#!/bin/sh\n# Reads its state at every request: nothing to "
                   "reload.\nexit 0\n")


def journal_bundle(path, restore=JOURNAL_RESTORE):
    """A web bundle of JOURNAL_APP, with a restore.sh (it takes a migrated
    state up without a restart; ``restore``: its text)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text, mode in (("wsgi.py", JOURNAL_APP, 0o644),
                                 ("restore.sh", restore, 0o755)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return path


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
    """The loadgen running as the Wi-Fi user(s) of one access point: an
    open loop (one request started every ``interval``), or ``clients``
    closed-loop users; ``keepalive`` for persistent connections."""

    def __init__(self, edge, ap, port, interval=0.01, clients=1, keepalive=False,
                 netns=None, url=None, method="GET"):
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
             "--method", method, "--stop-file", self.stop_file]
            + (["--keepalive"] if keepalive else []) + [
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
