"""Response time of each instance, as the auto-scaling policy compares it
with its service's latency objective.

One request per instance of a service with a latency objective per
heartbeat, from this node (where the proxy runs): an HTTP GET of
``/health`` for web services, a TCP connect for the
others.  A probe waits behind whatever the instance is busy with, so a
container starved of CPU shows it at once, and an idle one shows its
bare response time as soon as the load goes (HAProxy's own ``rtime`` is an
average of the last 1,024 requests and stays high while no request comes).
"""
import http.client
import socket
import time

APP_PORT = 8080
TIMEOUT = 1.0


def one(address, is_http=True, port=APP_PORT, timeout=TIMEOUT):
    """Milliseconds to an answer from ``address``: ``timeout`` (in ms) if
    none came in time, None if it refused (not serving: nothing to say)."""
    t0 = time.monotonic()
    try:
        if is_http:
            conn = http.client.HTTPConnection(address, port, timeout=timeout)
            try:
                # A health request: served like any other (it waits behind
                # the app's work) but changes no state.
                conn.request("GET", "/health", headers={
                    "User-Agent": "mec-conpaas-probe", "X-MEC-Health": "1"})
                conn.getresponse().read()
            finally:
                conn.close()
        else:
            socket.create_connection((address, port), timeout=timeout).close()
    except TimeoutError:
        return timeout * 1000
    except (OSError, http.client.HTTPException):
        return None
    return round((time.monotonic() - t0) * 1000, 2)


def latencies(targets, pool=None):
    """``{instance id: ms or None}`` for ``targets``: ``{id: (address,
    is_http)}``, probed in parallel."""
    import concurrent.futures  # only for services with a latency objective
    own = pool is None
    pool = pool or concurrent.futures.ThreadPoolExecutor(max_workers=8)
    try:
        futures = {i: pool.submit(one, a, h) for i, (a, h) in targets.items()}
        return {i: f.result() for i, f in futures.items()}
    finally:
        if own:
            pool.shutdown(wait=False)
