"""The flink service's gateway (agents/service/flink.py): records replayed
to every new connection of the job's source until their result is in,
second results dropped, all of it kept across a restart."""
import json
import socket
import urllib.request

from mec_conpaas.agents.service import flink


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_lines(conn, n, timeout=5):
    conn.settimeout(timeout)
    buf = b""
    while buf.count(b"\n") < n:
        data = conn.recv(65536)
        assert data, "feed closed"
        buf += data
    return buf.decode().splitlines()


def _post(port, path, lines):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                 data="\n".join(lines).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def _get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                timeout=5) as resp:
        return json.loads(resp.read())


def test_replay_dedup_and_restart(tmp_path):
    http_port, feed_port = _free_port(), _free_port()
    gw = flink.Gateway(str(tmp_path))
    httpd = flink.serve_gateway(gw, "127.0.0.1", http_port, feed_port)
    try:
        _post(http_port, "/frames", ["f1 AAA", "f2 BBB", "f3 CCC"])
        src = socket.create_connection(("127.0.0.1", feed_port))
        assert _read_lines(src, 3) == ["f1 AAA", "f2 BBB", "f3 CCC"]
        _post(http_port, "/results", [json.dumps({"id": "f1", "faces": [[1, 2, 3, 4]]})])
        src.close()  # the job restarted: f2 and f3 were in flight
        src = socket.create_connection(("127.0.0.1", feed_port))
        assert _read_lines(src, 2) == ["f2 BBB", "f3 CCC"]
        _post(http_port, "/frames", ["f4 DDD", "f1 AAA"])  # f1 is done: ignored
        assert _read_lines(src, 1) == ["f4 DDD"]
        _post(http_port, "/results", [json.dumps({"id": i, "faces": []})
                                      for i in ("f2", "f3", "f2")])
        got = _get(http_port, "/detections?from=1")["detections"]
        assert [d["id"] for d in got] == ["f2", "f3"]
        stats = _get(http_port, "/stats")
        assert stats["duplicates_dropped"] == 1 and stats["pending"] == 1
        src.close()
    finally:
        httpd.shutdown()
    # A new gateway on the same state (a restart, or a migrated JobManager)
    # has the same results and still owes f4.
    again = flink.Gateway(str(tmp_path))
    assert [json.loads(x)["id"] for x in again.results] == ["f1", "f2", "f3"]
    assert again.pending() == ["f4"]
    again.add_results([json.dumps({"id": "f4", "faces": []})])
    assert again.stats()["pending"] == 0


def test_bad_lines_are_refused(tmp_path):
    http_port, feed_port = _free_port(), _free_port()
    httpd = flink.serve_gateway(flink.Gateway(str(tmp_path)), "127.0.0.1",
                                http_port, feed_port)
    try:
        req = urllib.request.Request("http://127.0.0.1:%d/results" % http_port,
                                     data=b"not json", method="POST")
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("accepted a result that is not JSON")
        except urllib.error.HTTPError as e:
            assert e.code == 400
    finally:
        httpd.shutdown()
