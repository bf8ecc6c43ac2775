"""What a migration's freeze counts as a request in progress, on real
sockets (the test's own, on loopback)."""
import os
import socket

from mec_conpaas.agents.node import containers


def test_a_response_written_in_part_is_in_progress_until_the_app_closes():
    """The chaos test found an instance frozen (then killed) after its app
    had written the headers of a response and not the body: the bytes still
    queued made the connection look answered."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        conn, _ = srv.accept()
        try:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert conn.recv(100)  # the request read: now processing it
            assert containers._open_requests(os.getpid(), port) == 1
            # Part of an answer the client has not taken yet stays queued.
            conn.setblocking(False)
            sent = 0
            try:
                while True:
                    sent += conn.send(b"x" * 65536)
            except BlockingIOError:
                pass
            assert sent
            assert containers._open_requests(os.getpid(), port) == 1
            conn.close()  # answered: the app is done with it
            assert containers._open_requests(os.getpid(), port) == 0
        finally:
            conn.close()
            client.close()
