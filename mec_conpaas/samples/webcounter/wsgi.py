"""Sample web service: counts requests in its state directory.

The count survives migration because the state directory is copied (and it
is re-read on every request: ``restore.sh`` has nothing to do); the
answer names the instance that served it so tests and the demo can see
where requests go.
"""
import fcntl
import json
import os

STATE = os.path.join(os.environ.get("MEC_STATE_DIR", "/var/lib/service"), "hits")


def application(environ, start_response):
    if environ.get("HTTP_X_MEC_HEALTH") or environ["PATH_INFO"] == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    with open(STATE + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(STATE) as f:
                hits = int(f.read() or 0)
        except (OSError, ValueError):
            hits = 0
        hits += 1
        with open(STATE + ".tmp", "w") as f:
            f.write(str(hits))
        os.replace(STATE + ".tmp", STATE)
    body = json.dumps({"hits": hits, "instance": os.environ.get("MY_IP"),
                       "service": os.environ.get("MEC_SERVICE_NAME")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
