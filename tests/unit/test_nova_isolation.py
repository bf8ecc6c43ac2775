"""Isolation rules on an AP of the openstack driver, with real nftables in network
namespaces laid out as the deploy test bed's: nova's instances on neutron's brq bridge,
which also holds the provider interface, the master on the same L2 segment. An instance
reaches its own service's peer and the master's non-denied ports; another service's
instance, the node agent's port and [node_agent] instance_denied_ports (the manager's,
OpenStack's) are refused, bridged or addressed to the AP itself."""
import json
import os
import subprocess
import time
import uuid

import pytest

from mec_conpaas.agents.node import isolation

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")
PROVIDER = "10.232.0.0/24"
AGENT_PORT = 9681
DENIED = (9680, 5000)
# name: (address, service)
INSTANCES = {"a1": ("10.232.0.5", "svc-a"), "a2": ("10.232.0.6", "svc-a"),
             "b1": ("10.232.0.7", "svc-b")}

LISTEN = """
import socket, sys, threading
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    threading.Thread(target=lambda s=s: [s.accept()[0].close() for _ in iter(int, 1)],
                     daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def sh(*argv, ns=None):
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.run(prefix + list(argv), check=True, capture_output=True, text=True)


@pytest.fixture
def bed():
    tag = uuid.uuid4().hex[:6]
    ns = {n: "meciso-%s-%s" % (n, tag) for n in ["ap", "master"] + list(INSTANCES)}
    procs = []
    for name in ns.values():
        sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", "brq1", "type", "bridge", ns=ns["ap"])
        sh("ip", "link", "set", "brq1", "up", ns=ns["ap"])
        ports = {}
        for i, (peer, addr) in enumerate([("master", "10.231.0.10")] + [
                (n, a) for n, (a, _) in INSTANCES.items()]):
            port = "eth1" if peer == "master" else "tap%d" % i
            sh("ip", "link", "add", port, "netns", ns["ap"], "type", "veth", "peer",
               "name", "eth0", "netns", ns[peer])
            sh("ip", "link", "set", port, "master", "brq1", "up", ns=ns["ap"])
            sh("ip", "addr", "add", addr + "/24", "dev", "eth0", ns=ns[peer])
            sh("ip", "link", "set", "eth0", "up", ns=ns[peer])
            sh("ip", "link", "set", "lo", "up", ns=ns[peer])
            if peer == "master":
                sh("ip", "route", "add", PROVIDER, "dev", "eth0", ns=ns[peer])
            else:
                sh("ip", "route", "add", "default", "dev", "eth0", ns=ns[peer])
                ports[port] = addr
        # The AP: its backbone address (on eth0, as the node agent's) answers the
        # instances' ARP through the bridge; an on-link route to the provider network.
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p", ns=ns["ap"])
        sh("ip", "addr", "add", "10.231.0.11/32", "dev", "eth0", ns=ns["ap"])
        for dev in ("eth0", "eth0p", "lo"):
            sh("ip", "link", "set", dev, "up", ns=ns["ap"])
        sh("ip", "route", "add", PROVIDER, "dev", "brq1", "src", "10.231.0.11", ns=ns["ap"])
        for name, ports_open in (("ap", [AGENT_PORT, 8080] + list(DENIED)),
                                 ("master", [8080] + list(DENIED))) + tuple(
                (n, [8080]) for n in INSTANCES):
            p = subprocess.Popen(["ip", "netns", "exec", ns[name], "python3", "-c", LISTEN]
                                 + [str(x) for x in ports_open], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().strip() == "ready"
        services = {}
        for addr, sid in INSTANCES.values():
            services.setdefault(sid, {"near": [], "far": []})["near"].append({"addr": addr})
        rules = isolation.render(services, [PROVIDER], ports, [], AGENT_PORT, DENIED)
        subprocess.run(["ip", "netns", "exec", ns["ap"], "nft", "-f", "-"], input=rules,
                       text=True, check=True)
        yield ns
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for name in ns.values():
            subprocess.run(["ip", "netns", "del", name])


PROBE = """
import concurrent.futures, json, socket, sys
def probe(target):
    try:
        socket.create_connection(tuple(target), timeout=0.5).close()
        return True
    except OSError:
        return False
targets = json.loads(sys.argv[1])
with concurrent.futures.ThreadPoolExecutor(len(targets)) as ex:
    print(json.dumps(list(ex.map(probe, targets))))
"""


def reaches(ns, src, targets):
    """Which of ``[(addr, port)]`` accept a connection from namespace ``src``
    (one process, all at once: a refused one costs its 0.5 s timeout)."""
    out = sh("python3", "-c", PROBE, json.dumps(targets), ns=ns[src]).stdout
    return dict(zip(targets, json.loads(out)))


def test_nova_instances_reach_their_peers_and_not_the_node_or_other_services(bed):
    t0 = time.monotonic()
    a1 = reaches(bed, "a1", [("10.232.0.6", 8080), ("10.232.0.7", 8080),
                             ("10.231.0.10", 8080), ("10.231.0.11", 8080),
                             ("10.231.0.11", AGENT_PORT)]
                 + [(a, p) for a in ("10.231.0.10", "10.231.0.11") for p in DENIED])
    assert a1.pop(("10.232.0.6", 8080)) is True        # own service's peer
    assert a1.pop(("10.232.0.7", 8080)) is False       # another service's
    assert a1.pop(("10.231.0.10", 8080)) is True       # the outside, bridged
    assert a1.pop(("10.231.0.11", 8080)) is True       # the AP's endpoints
    # The node agent, the manager's and OpenStack's ports: bridged or on the AP.
    assert set(a1.values()) == {False}, a1
    assert reaches(bed, "b1", [("10.232.0.5", 8080)]) == {("10.232.0.5", 8080): False}
    # The nodes still reach every instance (health checks, HAProxy).
    assert set(reaches(bed, "master", [("10.232.0.7", 8080), ("10.232.0.5", 8080)]
                       ).values()) == {True}
    assert reaches(bed, "ap", [("10.232.0.5", 8080)]) == {("10.232.0.5", 8080): True}
    print("probes: %.1f s" % (time.monotonic() - t0))
