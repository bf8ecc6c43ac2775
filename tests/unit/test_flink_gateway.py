"""The flink service's gateway (agents/service/flink.py): records replayed
to every new connection of the job's source until their result is in,
second results dropped, all of it kept across a restart."""
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

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


def test_detections_long_poll(tmp_path):
    """``wait``: the read is answered when a result comes (not after the
    wait), with what came; an empty one after the wait, or at once once
    the job stopped for a migration's freeze; a bad one says what to
    fix."""
    http_port, feed_port = _free_port(), _free_port()
    gw = flink.Gateway(str(tmp_path))
    httpd = flink.serve_gateway(gw, "127.0.0.1", http_port, feed_port)
    try:
        got = {}

        def read():
            t0 = time.monotonic()
            got["detections"] = _get(http_port, "/detections?from=0&wait=4")["detections"]
            got["seconds"] = time.monotonic() - t0
        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.3)
        assert "detections" not in got  # held: nothing yet
        gw.add_results([json.dumps({"id": "f1", "faces": []})])
        reader.join(5)
        assert [d["id"] for d in got["detections"]] == ["f1"]
        assert 0.3 <= got["seconds"] < 2.0, got["seconds"]
        t0 = time.monotonic()
        assert _get(http_port, "/detections?from=1&wait=0.5")["detections"] == []
        assert time.monotonic() - t0 >= 0.5
        # the job stopped with a savepoint, the freeze comes: no read waits
        # (the freeze would wait for it), until a result comes again
        gw.stop_holding_reads()
        t0 = time.monotonic()
        assert _get(http_port, "/detections?from=1&wait=4")["detections"] == []
        assert time.monotonic() - t0 < 2.0
        gw.add_results([json.dumps({"id": "f2", "faces": []})])
        t0 = time.monotonic()
        assert _get(http_port, "/detections?from=2&wait=0.5")["detections"] == []
        assert time.monotonic() - t0 >= 0.5
        for bad in ("x", "-1", "nan"):
            with pytest.raises(urllib.error.HTTPError) as e:
                _get(http_port, "/detections?from=0&wait=" + bad)
            assert e.value.code == 400
            assert "wait a number of seconds" in json.loads(e.value.read())["error"]
    finally:
        httpd.shutdown()


def test_answered_records_leave_the_log(tmp_path, monkeypatch):
    """frames.log keeps only the records still owed a result (it moves
    with every migration, and would grow by every frame ever sent);
    ``received`` counts on across the rewrite and a restart."""
    monkeypatch.setattr(flink, "COMPACT_AFTER", 3)
    gw = flink.Gateway(str(tmp_path))
    gw.add_frames(["f%d %s" % (i, "X" * 1000) for i in range(5)])
    gw.add_results([json.dumps({"id": "f%d" % i, "faces": []}) for i in (0, 1)])
    assert (tmp_path / "frames.log").read_text().count("\n") == 5  # 2 < 3
    gw.add_results([json.dumps({"id": "f%d" % i, "faces": []}) for i in (2, 3)])
    assert (tmp_path / "frames.log").read_text() == "f4 %s\n" % ("X" * 1000)
    gw.add_frames(["f5 Y", "f2 again"])  # f2 is answered: still ignored
    assert gw.stats()["received"] == 6 and gw.pending() == ["f4", "f5"]
    again = flink.Gateway(str(tmp_path))
    assert again.stats() == dict(gw.stats(), duplicates_dropped=0)
    assert again.pending() == ["f4", "f5"]
    assert [json.loads(x)["id"] for x in again.results] == ["f0", "f1", "f2", "f3"]
    again.add_frames(["f3 late"])
    assert again.stats()["received"] == 6


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


def test_planted_links_are_refused_not_followed(tmp_path):
    """The state directory is the tenant's too (its job runs as the same
    user) and arrives by copy with each migration: a link where the gateway
    keeps its records, or its savepoints, is refused, and what it points at
    is neither read, written nor offered to ``flink run -s``."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("precious\n")
    # the gateway's own directory a link
    state = tmp_path / "state1"
    state.mkdir()
    (state / "gateway").symlink_to(outside)
    with pytest.raises(flink.PlantedLink, match="not a directory .a link."):
        flink.Gateway(str(state / "gateway"))
    # its logs links (to read from, and to append to)
    for name in ("results.log", "frames.log"):
        gw_dir = tmp_path / ("state-" + name) / "gateway"
        gw_dir.mkdir(parents=True)
        (gw_dir / name).symlink_to(victim)
        with pytest.raises(flink.PlantedLink, match="%s is a link" % name):
            flink.Gateway(str(gw_dir))
    # a FIFO is no log either (an open would block)
    gw_dir = tmp_path / "state-fifo" / "gateway"
    gw_dir.mkdir(parents=True)
    os.mkfifo(gw_dir / "frames.log")
    with pytest.raises(flink.PlantedLink, match="not a regular file"):
        flink.Gateway(str(gw_dir))
    assert victim.read_text() == "precious\n"
    # savepoints: a link as the directory, or as one savepoint, or as its
    # _metadata, is never the one restored from
    sp = tmp_path / "savepoints"
    sp.symlink_to(outside)
    (outside / "savepoint-x").mkdir()
    (outside / "savepoint-x" / "_metadata").write_text("")
    assert flink.latest_savepoint(str(sp)) is None
    sp.unlink()
    sp.mkdir()
    (sp / "savepoint-link").symlink_to(outside / "savepoint-x")
    (sp / "savepoint-meta").mkdir()
    (sp / "savepoint-meta" / "_metadata").symlink_to(victim)
    assert flink.latest_savepoint(str(sp)) is None
    (sp / "savepoint-real").mkdir()
    (sp / "savepoint-real" / "_metadata").write_text("")
    assert flink.latest_savepoint(str(sp)) == str(sp / "savepoint-real")
    with pytest.raises(flink.PlantedLink, match="a link"):
        flink.own_dir(str(sp / "savepoint-link"))
    # and an ordinary gateway still starts, and keeps its records
    gw = flink.Gateway(str(tmp_path / "fresh" / "gateway"))
    gw.add_frames(["a1 x"])
    assert flink.Gateway(str(tmp_path / "fresh" / "gateway")).stats()["received"] == 1


def test_a_jvm_in_its_own_session_dies_with_flink_py(tmp_path):
    """flink.py starts the JobManager/TaskManager in sessions of their own;
    a SIGKILL to flink.py's group (the service agent's ``restore
    prepare``) must still end them, or the orphan keeps the JobManager's
    ports and every new JobManager fails to bind (session 7's restore
    loop).  A child started as flink.py starts its JVMs, then the parent
    killed with SIGKILL: the child is gone."""
    import signal
    import subprocess
    import sys
    import time
    pidfile = tmp_path / "child"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "sys.path.insert(0, %r)\n"
        "import flink\n"
        "p = subprocess.Popen(flink.dies_with_us(['sleep', '60']),"
        " start_new_session=True)\n"
        "open(%r, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n") % (os.path.dirname(flink.__file__), str(pidfile))],
        start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text()):
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.05)
        child = int(pidfile.read_text())
        assert os.getpgid(child) != os.getpgid(parent.pid)  # its own session
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 5
        while True:
            try:  # a zombie under init is gone too: /proc says "Z"
                with open("/proc/%d/stat" % child) as f:
                    gone = f.read().split(") ", 1)[1].startswith("Z")
            except FileNotFoundError:
                gone = True
            if gone:
                break
            assert time.monotonic() < deadline, "the child outlived flink.py"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
