"""What a migration's freeze counts as a request in progress, on real
sockets (the test's own, on loopback)."""
import os
import socket
import subprocess
import sys

from mec_conpaas.agents.node import containers
from mec_conpaas.agents.node import sockdiag


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


def test_sock_diag_sees_what_proc_net_tcp_sees_in_another_namespace():
    """The freeze asks the kernel (sock_diag) in the instance's network
    namespace; the same connections as the namespace's /proc table."""
    # A process in its own network namespace holding one established
    # connection to its port 8080 with a request read, and one unread.
    script = (
        "import socket,sys,time\n"
        "import subprocess; subprocess.run(['ip','link','set','lo','up'],check=True)\n"
        "s=socket.create_server(('127.0.0.1',8080))\n"
        "a=socket.create_connection(('127.0.0.1',8080)); x,_=s.accept()\n"
        "b=socket.create_connection(('127.0.0.1',8080)); y,_=s.accept()\n"
        "a.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); x.recv(100)\n"
        "b.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
        "print('ready',flush=True); time.sleep(60)\n")
    proc = subprocess.Popen(["unshare", "-n", sys.executable, "-c", script],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        rows = sockdiag.established(proc.pid)
        assert sorted(rx for port, rx in rows if port == 8080) == [0, 18]
        with open("/proc/%d/net/tcp" % proc.pid) as f:
            table = [line.split() for line in f.readlines()[1:]]
        assert sorted(int(f[4].split(":")[1], 16) for f in table
                      if f[1].endswith(":1F90") and f[3] == "01") == [0, 18]
        assert containers._open_requests(proc.pid, 8080) == 1
    finally:
        proc.kill()
        proc.wait()
