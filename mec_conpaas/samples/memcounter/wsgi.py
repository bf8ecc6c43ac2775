"""Sample web service that reads its state once, when it starts.

Like most real applications (a cache warmed from disk, an in-memory
store with a snapshot file), it loads its request counter from the state
directory at start, counts in memory and writes each new value back.  It
has no ``restore.sh``: when migration's final state delta arrives, the
service agent restarts it, and it loads the count again.
"""
import json
import os
import threading

STATE = os.path.join(os.environ.get("MEC_STATE_DIR", "/var/lib/service"), "hits")
LOCK = threading.Lock()
try:
    with open(STATE) as f:
        HITS = int(f.read() or 0)
except (OSError, ValueError):
    HITS = 0


def application(environ, start_response):
    global HITS
    if environ.get("HTTP_X_MEC_HEALTH") or environ["PATH_INFO"] == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    with LOCK:
        HITS += 1
        hits = HITS
        with open(STATE + ".tmp", "w") as f:
            f.write(str(hits))
        os.replace(STATE + ".tmp", STATE)
    body = json.dumps({"hits": hits, "instance": os.environ.get("MY_IP"),
                       "role": os.environ.get("MY_ROLE"),
                       "service": os.environ.get("MEC_SERVICE_NAME")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
