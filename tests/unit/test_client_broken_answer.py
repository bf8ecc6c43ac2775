"""The CLI client when the manager dies in the middle of an answer (what
test_chaos's manager kills produce): a clear ApiError with status 0, which
callers treat as "unknown outcome", never a requests traceback."""
import socket
import threading

import pytest

from mec_conpaas.cli import client as client_mod


def _half_answering_server():
    """One connection at a time: an HTTP head promising 1,000 bytes, 10
    sent, then the connection closed (a real socket, no mock)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n\r\n{\"services\"")
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, stop, t


def test_an_answer_cut_short_is_an_api_error_with_unknown_outcome():
    srv, stop, t = _half_answering_server()
    try:
        c = client_mod.Client(url="http://127.0.0.1:%d" % srv.getsockname()[1],
                              token="x", timeout=5)
        with pytest.raises(client_mod.ApiError) as e:
            c.request("POST", "/v1/services", json={})
        assert e.value.status == 0
        assert "in the middle of its answer" in e.value.message
    finally:
        stop.set()
        t.join(2)
        srv.close()
