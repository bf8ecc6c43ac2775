"""What a migration's freeze counts as a request in progress, on real
sockets (the test's own, on loopback)."""
import json
import os
import socket
import subprocess
import sys

from mec_conpaas.agents.node import containers
from mec_conpaas.agents.node import sockdiag


def partial_response_counts():
    """``_open_requests`` on a request read, then answered in part, then
    closed.  Run in a network namespace of its own: it counts by local port
    only (an instance's namespace holds only its app), and in the host's a
    connection of another process on another address can have the same
    port (concurrent test runs and edges share that namespace)."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    counts = []
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        conn, _ = srv.accept()
        try:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert conn.recv(100)  # the request read: now processing it
            counts.append(containers._open_requests(os.getpid(), port))
            # Part of an answer the client has not taken yet stays queued.
            conn.setblocking(False)
            sent = 0
            try:
                while True:
                    sent += conn.send(b"x" * 65536)
            except BlockingIOError:
                pass
            assert sent
            counts.append(containers._open_requests(os.getpid(), port))
            conn.close()  # answered: the app is done with it
            counts.append(containers._open_requests(os.getpid(), port))
        finally:
            conn.close()
            client.close()
    return counts


def test_a_response_written_in_part_is_in_progress_until_the_app_closes():
    """The chaos test found an instance frozen (then killed) after its app
    had written the headers of a response and not the body: the bytes still
    queued made the connection look answered."""
    res = subprocess.run(["unshare", "-n", sys.executable, __file__],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    # In progress once read and while answered in part; not once closed.
    assert json.loads(res.stdout) == [1, 1, 0]


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


if __name__ == "__main__":
    print(json.dumps(partial_response_counts()))
