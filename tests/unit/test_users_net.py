"""Emulated users on real namespaces and bridges, without the whole edge:
two access points (a Wi-Fi bridge each, routed to each other), one user
handed over between them while a connection to the first AP is open."""
import os
import subprocess
import time

import pytest

from mec_conpaas.edge import network as net_mod
from mec_conpaas.edge import users as users_mod

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")


@pytest.fixture
def two_aps():
    prefix = "usrn%d-" % (os.getpid() % 10000)
    aps = {"ap-1": prefix + "ap-1", "ap-2": prefix + "ap-2"}

    def ip(ns, *args):
        subprocess.run(["ip", "-n", ns] + list(args), check=True)
    try:
        for n, (_ap, ns) in enumerate(sorted(aps.items()), 1):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            ip(ns, "link", "set", "lo", "up")
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                            "net.ipv4.ip_forward=1"], check=True)
            ip(ns, "link", "add", net_mod.WIFI_AP_IF, "type", "bridge")
            ip(ns, "addr", "add", "10.99.%d.1/24" % n, "dev", net_mod.WIFI_AP_IF)
            ip(ns, "link", "set", net_mod.WIFI_AP_IF, "up")
        subprocess.run(["ip", "link", "add", "usrn-a", "netns", aps["ap-1"], "type",
                        "veth", "peer", "name", "usrn-b", "netns", aps["ap-2"]], check=True)
        ip(aps["ap-1"], "addr", "add", "10.98.0.1/30", "dev", "usrn-a")
        ip(aps["ap-2"], "addr", "add", "10.98.0.2/30", "dev", "usrn-b")
        ip(aps["ap-1"], "link", "set", "usrn-a", "up")
        ip(aps["ap-2"], "link", "set", "usrn-b", "up")
        ip(aps["ap-1"], "route", "add", "10.99.2.0/24", "via", "10.98.0.2")
        ip(aps["ap-2"], "route", "add", "10.99.1.0/24", "via", "10.98.0.1")
        yield users_mod.Users(prefix, aps, grace=5.0)
    finally:
        for ns in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                 text=True).stdout.split():
            if ns.startswith(prefix):
                subprocess.run(["ip", "netns", "del", ns])


def stations(ns):
    out = subprocess.run(["ip", "-n", ns, "-d", "-o", "link", "show", "master",
                          net_mod.WIFI_AP_IF], capture_output=True, text=True).stdout
    return [line.split("alias ")[1].split()[0] for line in out.splitlines()
            if "alias " in line]


def test_attach_move_detach(two_aps):
    users = two_aps
    assert users.attach("alice", "ap-1") == (None, "10.99.1.10")
    assert users.attach("bob", "ap-1") == (None, "10.99.1.11")
    assert users.where("alice") == "ap-1"
    assert stations(users.ap_netns["ap-1"]) == ["user=alice", "user=bob"]
    assert users.attach("alice", "ap-2") == ("ap-1", "10.99.2.10")
    assert users.where("alice") == "ap-2" and users.address("alice") == "10.99.2.10"
    assert stations(users.ap_netns["ap-1"]) == ["user=bob"]
    assert stations(users.ap_netns["ap-2"]) == ["user=alice"]
    assert [(u["user"], u["ap"]) for u in users.list()] == [("alice", "ap-2"),
                                                          ("bob", "ap-1")]
    assert users.detach("alice") == "ap-2" and users.where("alice") is None
    assert stations(users.ap_netns["ap-2"]) == []
    with pytest.raises(users_mod.UserError, match="unknown access point"):
        users.attach("alice", "ap-9")
    with pytest.raises(users_mod.UserError, match="lowercase"):
        users.attach("Alice", "ap-1")
    with pytest.raises(users_mod.UserError, match="no user 'carol'"):
        users.where("carol")


def test_handover_keeps_a_connection_in_flight(two_aps):
    """Make-before-break: a request sent before the handover gets its
    answer after it, through the old link; new ones use the new AP."""
    users = two_aps
    users.attach("alice", "ap-1")
    server = subprocess.Popen(
        ["ip", "netns", "exec", users.ap_netns["ap-1"], "python3", "-c",
         "import socket,time\n"
         "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
         "s.bind(('10.99.1.1',7000));s.listen(4);print('up',flush=True)\n"
         "while True:\n"
         "  c,a=s.accept();d=c.recv(100);time.sleep(1.0)\n"
         "  c.sendall(d+(' from %s' % a[0]).encode());c.close()\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "up"
        script = ("import socket,sys\nc=socket.create_connection(('10.99.1.1',7000),5)\n"
                  "c.sendall(b'hi');print('sent',flush=True);print(c.recv(100).decode())\n")
        client = subprocess.Popen(["ip", "netns", "exec", users.netns("alice"),
                                   "python3", "-c", script],
                                  stdout=subprocess.PIPE, text=True)
        # The request is at the server, its answer not yet.
        assert client.stdout.readline().strip() == "sent"
        t0 = time.monotonic()
        users.attach("alice", "ap-2")
        waited = time.monotonic() - t0
        out, _ = client.communicate(timeout=10)
        assert out.strip() == "hi from 10.99.1.10"
        assert 0.2 < waited < 5.0  # the old link stayed until the answer
        client = subprocess.run(["ip", "netns", "exec", users.netns("alice"), "python3",
                                 "-c", script], capture_output=True, text=True, timeout=10)
        assert client.stdout.split() == ["sent", "hi", "from", "10.99.2.10"]
        assert "wlan" not in subprocess.run(
            ["ip", "-n", users.netns("alice"), "rule"], capture_output=True,
            text=True).stdout
    finally:
        server.kill()
        server.wait()


def test_fixed_users_do_not_move(two_aps):
    with pytest.raises(users_mod.UserError, match="fixed user"):
        two_aps.attach("cl-1", "ap-2")
