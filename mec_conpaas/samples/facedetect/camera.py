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
"""
import argparse
import json
import os
import threading
import time
import urllib.request


def post(url, lines, patience=180.0):
    """POST until accepted: a frame the endpoint refused (a migration's
    switch: the JobManager's instance is frozen for seconds while its state
    moves) is sent again, and counted; for ``patience`` seconds at most."""
    data = "".join(x + "\n" for x in lines).encode()
    deadline = time.monotonic() + patience
    n = 0
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(
                    url + "/frames", data=data, method="POST"), timeout=10) as r:
                r.read()
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
        while not done.is_set():
            try:
                with urllib.request.urlopen("%s/detections?from=%d" % (url, nxt),
                                            timeout=10) as r:
                    got = json.loads(r.read())["detections"]
            except Exception:  # the endpoint is switching: ask again
                time.sleep(0.1)
                continue
            now = time.monotonic()
            for d in got:
                seen.setdefault(d["id"], (now, d))
            nxt += len(got)
            if all(i in seen for i in ids):
                done.set()
            time.sleep(poll)

    t = threading.Thread(target=reader, daemon=True)
    start = time.monotonic()
    if every:
        t.start()
        for i, line in zip(ids, lines):
            if stop_file and os.path.exists(stop_file):
                ids = ids[:len(sent)]
                break
            sent[i] = time.monotonic()
            retries[0] += post(url, [line])
            time.sleep(max(0.0, sent[i] + every - time.monotonic()))
    else:
        for k in range(0, len(lines), batch):
            now = time.monotonic()
            for i in ids[k:k + batch]:
                sent[i] = now
            retries[0] += post(url, lines[k:k + batch])
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
