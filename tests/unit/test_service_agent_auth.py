"""The service agent (the real program, on loopback) with a held start:
the secret file the node agent writes is read and removed before anything
runs; unauthenticated callers learn only "not healthy" (what HAProxy
checks) and may not start, restore or stop it; the secret's holder sees
why it is not healthy and releases it."""
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from mec_conpaas import exception
from mec_conpaas.agents.node import containers
from mec_conpaas.agents.node import httpserver
from mec_conpaas.agents.node import isolation

SECRET = isolation.agent_secret("node-token", "0" * 8 + "-0000-0000-0000-" + "0" * 12)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(method, url, token=None):
    """("ok", body) on success, else (HTTP status or None, message)."""
    try:
        return "ok", httpserver.call(method, url, token, body={} if method == "POST"
                                    else None, timeout=5)
    except exception.NodeError as e:
        return getattr(e, "remote_status", None), e.message


@pytest.fixture
def held_agent(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "run.sh").write_text("exec sleep 60\n")
    secret_file = str(tmp_path / "etc" / "mec-conpaas" / "agent-secret")
    containers._write_secret(secret_file, SECRET, os.getuid(), os.getgid())
    port = free_port()
    env = dict(os.environ, MEC_HOLD="1", MEC_AGENT_PORT=str(port),
               MEC_APP_PORT=str(free_port()), MEC_APP_DIR=str(app),
               MEC_STATE_DIR=str(tmp_path / "state"), MEC_RUN_DIR=str(tmp_path / "run"),
               MEC_LOG_FILE=str(tmp_path / "app.log"), MEC_SECRET_FILE=secret_file)
    proc = subprocess.Popen([sys.executable, containers.SERVICE_AGENT], env=env)
    url = "http://127.0.0.1:%d" % port
    deadline = time.monotonic() + 10
    while status("GET", url + "/health")[0] is None:
        assert time.monotonic() < deadline and proc.poll() is None, "agent did not start"
        time.sleep(0.05)
    yield url, secret_file
    proc.terminate()
    proc.wait(15)


def test_written_for_the_instance_root_only(tmp_path):
    path = str(tmp_path / "etc" / "mec-conpaas" / "agent-secret")
    containers._write_secret(path, SECRET, 4242, 4343)
    for p, mode in ((path, 0o400), (os.path.dirname(path), 0o700)):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, 4343, mode)


def test_held_agent_answers_only_its_secret(held_agent):
    url, secret_file = held_agent
    assert not os.path.exists(secret_file)  # read, then removed
    # HAProxy's view: not healthy, and nothing more.
    code, msg = status("GET", url + "/health")
    assert code == 503 and "held" not in msg
    # The manager's (with the secret): why.
    code, msg = status("GET", url + "/health", SECRET)
    assert code == 503 and "held until its state is in" in msg
    for path in ("/start", "/restore", "/stop", "/notify", "/interrupt"):
        for token in (None, isolation.agent_secret("node-token", "another")):
            code, msg = status("POST", url + path, token)
            assert code == 401 and "secret" in msg, (path, code, msg)
    assert status("GET", url + "/logs")[0] == 401
    assert "held until" in status("GET", url + "/health", SECRET)[1]  # still held
    assert status("POST", url + "/start", SECRET)[0] == "ok"
    deadline = time.monotonic() + 10
    while status("GET", url + "/health")[0] != "ok":
        assert time.monotonic() < deadline, status("GET", url + "/health", SECRET)
        time.sleep(0.05)
    assert status("GET", url + "/health") == ("ok", {"healthy": True})
    code, body = status("POST", url + "/stop", SECRET)
    assert code == "ok" and body["state"] == "STOPPED", body
