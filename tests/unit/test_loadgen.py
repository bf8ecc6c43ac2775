"""The load generator against a real HTTP server on loopback: starts keep
their schedule whatever earlier requests do, keep-alive reuses
connections, and failures are counted by kind."""
import http.server
import json
import os
import threading
import time

import pytest

from mec_conpaas.edge import loadgen


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits = 0
    lock = threading.Lock()
    stall = {}  # hit number -> seconds to wait before answering
    fail = set()  # hit numbers answered 503

    def do_GET(self):
        with Handler.lock:
            Handler.hits += 1
            n = Handler.hits
        time.sleep(Handler.stall.get(n, 0))
        code = 503 if n in Handler.fail else 200
        body = json.dumps({"hits": n, "instance": "a"}).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.hits, Handler.stall, Handler.fail = 0, {10: 0.3}, {20}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d/" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def run(tmp_path, url, *extra, seconds=1.0):
    stop = tmp_path / "stop"
    out = tmp_path / "out.json"
    threading.Timer(seconds, lambda: stop.write_text("")).start()
    loadgen.main(["--url", url, "--interval", "0.01", "--timeout", "2",
                  "--stop-file", str(stop), "--out", str(out)] + list(extra))
    os.unlink(stop)
    return json.loads(out.read_text())


@pytest.mark.parametrize("keepalive", [False, True])
def test_open_loop_keeps_its_schedule_through_a_slow_answer(tmp_path, server, keepalive):
    results = run(tmp_path, server, *(["--keepalive"] if keepalive else []))
    s = loadgen.summarize(results)
    assert 80 <= s["requests"] <= 110, s
    # The 300 ms answer to request 10 held back none of the later starts:
    # requests were sent, and answered, while it was outstanding.  Counted
    # against the slow request's own interval, not against wall-clock
    # bounds, so a loaded machine that starts every request late still
    # passes if (and only if) the loop is open.
    slow = next(r for r in results if r.get("hits") == 10)
    during = [r for r in results if r is not slow
              and slow["sent"] < r["sent"] < slow["end"]]
    assert len(during) >= 10, (len(during), s)
    assert any(r["ok"] and r["end"] < slow["end"] for r in during), s
    assert s["max_ms"] >= 300, s
    assert s["failed"] == 1 and s["failures_by_kind"] == {"http-503": 1}, s
    assert sorted(r["hits"] for r in results if r["ok"]) == \
        [n for n in range(1, len(results) + 1) if n != 20]
    if keepalive:
        # Connections came back to the pool: a new one is opened only when
        # every open one is busy, so no more were opened than requests were
        # ever in flight at once (+2: a connection goes back to the pool just
        # after its request's end is stamped).  Bounded by the run's own
        # overlap, not a fixed count, so a slow machine does not fail it.
        peak = max(sum(1 for o in results if o["sent"] <= r["sent"] <= o["end"])
                   for r in results)
        opened = s["requests"] - s["reused_connections"]
        assert opened <= peak + 2, (opened, peak, s)
    else:
        assert s["reused_connections"] == 0, s


def test_refused_connections_are_counted_by_kind(tmp_path):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    results = run(tmp_path, "http://127.0.0.1:%d/" % port, seconds=0.2)
    s = loadgen.summarize(results)
    assert s["requests"] == s["failed"] > 5
    assert s["failures_by_kind"] == {"refused": s["requests"]}
    assert s["max_gap_ms"] is None


def test_open_loop_needs_an_interval(tmp_path):
    with pytest.raises(SystemExit):
        loadgen.main(["--url", "http://127.0.0.1:1/", "--interval", "0",
                      "--stop-file", str(tmp_path / "s"), "--out", str(tmp_path / "o")])
