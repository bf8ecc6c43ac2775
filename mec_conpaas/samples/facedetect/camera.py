"""The camera user of the face-recognition workload: sends frames to the
flink service's endpoint and reads the detections back, timing both.

Runs as a Wi-Fi user (``ip netns exec`` in a client namespace; stdlib only)
or on the host for the no-PaaS baseline.  ``--every S``: one frame every S
seconds (a live stream; per-frame latency from sending to seeing its
detection); ``--every 0``: the whole video at once (processing time per
video, frames per second).  ``--stop-file F``: stop sending once F exists
(a stream of unknown length).  ``--timeline``: also each frame's send time
(CLOCK_MONOTONIC, the same in every network namespace) and latency, in
send order.  Prints one JSON object.

Like a camera app, it keeps its connections (one for its frames, one for
its reads) and lets the gateway hold each read until a detection comes
(``GET /detections?wait=S``) rather than asking every few ms: over the
Wi-Fi hop and the proxy, a new connection per request and a poll's
interval were each a cost of the path that the host's loopback hid.
"""
import argparse
import http.client
import json
import os
import threading
import time
import urllib.parse

# How long a read of the detections may be held by the gateway when none
# is new (its ``wait``; the gateway answers as soon as one comes).
WAIT_S = 2.0


class Connection:
    """One kept-alive HTTP/1.1 connection to the endpoint, opened again
    when it breaks (the proxy or the instance closed it; a migration's
    switch): each request crosses the Wi-Fi hop and the proxy once, not
    once more for a new connection's handshake, and a camera streaming
    frames keeps its connection as a real one would."""

    def __init__(self, url, timeout=10.0):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None):
        """The answer's body; raises on a failed exchange or an error
        status (after closing the connection, so the next one is new)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port,
                                                   timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body)
            resp = self.conn.getresponse()
            data = resp.read()
        except Exception:
            self.close()
            raise
        if resp.will_close:
            self.close()
        if resp.status >= 400:
            raise RuntimeError("%s %s: HTTP %d" % (method, path, resp.status))
        return data

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def post(conn, lines, patience=180.0):
    """POST until accepted: a frame the endpoint refused (a migration's
    switch: the JobManager's instance is frozen for seconds while its state
    moves) is sent again, and counted; for ``patience`` seconds at most."""
    data = "".join(x + "\n" for x in lines).encode()
    deadline = time.monotonic() + patience
    n = 0
    while True:
        try:
            conn.request("POST", "/frames", data)
            return n
        except Exception:
            n += 1
            if time.monotonic() > deadline:
                raise RuntimeError("the endpoint refused frames for %.0f s (%d tries)"
                                   % (patience, n)) from None
            time.sleep(0.05)


def run(url, lines, every, timeout, poll=0.01, batch=10, stop_file=None,
        timeline=False):
    ids = [x.split(" ", 1)[0] for x in lines]
    sent, seen, retries = {}, {}, [0]
    done = threading.Event()

    def reader():
        nxt = 0
        conn = Connection(url, timeout=WAIT_S + 10)
        while not done.is_set():
            asked = time.monotonic()
            try:
                got = json.loads(conn.request("GET", "/detections?from=%d&wait=%g" % (
                    nxt, WAIT_S)))["detections"]
            except Exception:  # the endpoint is switching: ask again
                time.sleep(0.1)
                continue
            now = time.monotonic()
            for d in got:
                seen.setdefault(d["id"], (now, d))
            nxt += len(got)
            if all(i in seen for i in ids):
                done.set()
            if not got and now - asked < WAIT_S / 2:
                time.sleep(poll)  # a gateway that did not hold the read

    t = threading.Thread(target=reader, daemon=True)
    frames_conn = Connection(url)
    start = time.monotonic()
    if every:
        t.start()
        for i, line in zip(ids, lines):
            if stop_file and os.path.exists(stop_file):
                ids = ids[:len(sent)]
                break
            sent[i] = time.monotonic()
            retries[0] += post(frames_conn, [line])
            time.sleep(max(0.0, sent[i] + every - time.monotonic()))
    else:
        for k in range(0, len(lines), batch):
            now = time.monotonic()
            for i in ids[k:k + batch]:
                sent[i] = now
            retries[0] += post(frames_conn, lines[k:k + batch])
        t.start()
    done.wait(timeout)
    end = time.monotonic()
    done.set()
    lat = sorted(1000 * (seen[i][0] - sent[i]) for i in ids if i in seen)
    last = max((seen[i][0] for i in ids if i in seen), default=end)
    return {"frames": len(ids), "results": len([i for i in ids if i in seen]),
            "post_retries": retries[0],
            "seconds": round(last - start, 3),
            "fps": round(len(seen) / (last - start), 2) if seen else 0.0,
            "latency_ms": lat,
            "faces": {i: len(seen[i][1]["faces"]) for i in ids if i in seen},
            "taskmanagers": sorted({seen[i][1].get("taskmanager") for i in ids
                                    if i in seen} - {None}),
            **({"timeline": [[round(sent[i], 4), round(1000 * (seen[i][0] - sent[i]), 1)
                              if i in seen else None, seen[i][1].get("taskmanager")
                              if i in seen else None] for i in ids]}
               if timeline else {})}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="http://ENDPOINT:PORT")
    p.add_argument("--frames", required=True, help="file of lines ID BASE64-JPEG")
    p.add_argument("--every", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--stop-file", help="stop sending once this file exists")
    p.add_argument("--timeline", action="store_true",
                   help="each frame's send time and latency too")
    args = p.parse_args()
    with open(args.frames) as f:
        lines = f.read().splitlines()
    print(json.dumps(run(args.url.rstrip("/"), lines, args.every, args.timeout,
                         stop_file=args.stop_file, timeline=args.timeline)))


if __name__ == "__main__":
    main()
