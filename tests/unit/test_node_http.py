"""The node agent's HTTP front: authentication comes before routing, so a
caller without the token learns nothing; then 404 and 405 (with Allow)."""
import http.client
import json
import threading

import pytest

from mec_conpaas.agents.node import agent as agent_mod
from mec_conpaas.agents.node import httpserver

IID = "0b5f2d0c-5d7e-4a77-8f2e-7d3c1f4a9e01"


@pytest.fixture
def node(conf, tmp_path):
    conf.set_override("state_path", str(tmp_path))
    conf.set_override("container_backend", "none", group="node_agent")
    agent = agent_mod.NodeAgent(conf)
    server = httpserver.Server(("127.0.0.1", 0),
                               httpserver.make_handler(agent.router(), agent.authenticate))
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield agent, server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()
    conf.clear_override("container_backend", group="node_agent")
    conf.clear_override("state_path")


def request(port, method, path, token=None, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = "Bearer " + token
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, json.loads(data) if data else None


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/health"), ("GET", "/v1/no/such/path"), ("DELETE", "/v1/health"),
    ("PATCH", "/v1/proxy"), ("POST", "/v1/instances/%s/state/import" % IID),
    ("OPTIONS", "/v1/instances")])
def test_without_token_everything_is_401_alike(node, method, path):
    agent, port = node
    for token in (None, "wrong-" + agent.token):
        resp, body = request(port, method, path, token)
        assert resp.status == 401 and resp.getheader("WWW-Authenticate") == "Bearer"
        assert body == {"error": {"code": "unauthorized",
                                  "message": "missing or wrong node agent token"}}
        assert resp.getheader("Allow") is None


def test_unknown_path_404_wrong_method_405(node):
    agent, port = node
    resp, body = request(port, "GET", "/v1/no/such/path", agent.token)
    assert resp.status == 404 and body["error"]["code"] == "not_found"
    resp, body = request(port, "DELETE", "/v1/health", agent.token)
    assert resp.status == 405 and resp.getheader("Allow") == "GET"
    assert "use GET" in body["error"]["message"]
    resp, _ = request(port, "PATCH", "/v1/proxy", agent.token, b"{}")
    assert resp.status == 405 and resp.getheader("Allow") == "GET, PUT"
    resp, _ = request(port, "POST", "/v1/instances/%s/logs" % IID, agent.token)
    assert resp.status == 405 and resp.getheader("Allow") == "GET"
    resp, body = request(port, "GET", "/v1/health", agent.token)
    assert resp.status == 200 and body["id"] == agent.id


def test_bad_bodies_are_400(node):
    agent, port = node
    base = "/v1/instances/%s/state/" % IID
    for path, body in ((base + "export", {"paths": "a"}), (base + "export", [1]),
                       (base + "pull", {"source": {"url": "http://x"}}),
                       (base + "push", {"target": None})):
        resp, err = request(port, "POST", path, agent.token, json.dumps(body),
                            {"Content-Type": "application/json"})
        assert resp.status == 400, (path, err)
    resp, err = request(port, "POST", base + "export", agent.token, b"{",
                        {"Content-Type": "application/json"})
    assert resp.status == 400 and "not JSON" in err["error"]["message"]


def test_refused_upload_closes_the_connection(node):
    """An unauthenticated body is not read: the connection cannot go on."""
    agent, port = node
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/instances/%s/state/import" % IID, body=b"x" * 100000,
                 headers={"Content-Type": "application/x-tar"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 401 and resp.getheader("Connection") == "close"
    conn.close()


def test_an_answer_cut_short_is_a_node_error():
    """A peer killed while answering (a SIGKILLed manager): the caller gets
    NodeError, which the node agent's heartbeat loop handles, not
    IncompleteRead, which ended that loop's thread."""
    import socket
    import threading

    from mec_conpaas import exception
    from mec_conpaas.agents.node import httpserver
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def cut():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 266\r\n\r\n{")
        # End the answer (EOF) but read what is left of the request until the
        # client hangs up: closing with unread bytes would send a reset, which
        # the client may see (ECONNRESET) before the short answer.
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(5)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()
    t = threading.Thread(target=cut, daemon=True)
    t.start()
    try:
        with pytest.raises(exception.NodeError, match="IncompleteRead"):
            httpserver.call("POST", "http://127.0.0.1:%d/v1/nodes/x/heartbeat"
                            % srv.getsockname()[1], "t", {}, timeout=5)
    finally:
        t.join(5)
        srv.close()


def test_calls_from_new_threads_reuse_one_connection():
    """The threaded server runs each request in a new thread; a call made
    from there (migration's final state push) must reuse a kept-alive
    connection rather than pay a handshake inside the critical window."""
    peers = []

    class Handler(httpserver.http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            peers.append(self.client_address)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = httpserver.Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    url = "http://127.0.0.1:%d/x" % server.server_address[1]
    try:
        for _ in range(3):
            caller = threading.Thread(target=httpserver.call, args=("GET", url))
            caller.start()
            caller.join()
        assert len(peers) == 3 and len(set(peers)) == 1
        httpserver.hang_up(url)
        httpserver.call("GET", url)
        assert len(set(peers)) == 2  # hung up: the next call opens a new one
    finally:
        httpserver.hang_up(url)
        server.shutdown()
        server.server_close()
        thread.join()
