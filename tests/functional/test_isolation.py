"""Tenants are isolated on the network: two tenants' services side by side on
the same access points (ap-1 and ap-2).  From inside tenant A's container
its own peer answers (same AP and across the backbone) and tenant B's
instances do not; Wi-Fi users reach the access point's endpoints but no
instance address; the service agents' API wants the per-instance secret;
tenants' node views show their own instances only."""
import glob
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

import pytest

from mec_conpaas.agents.node import isolation
from tests.functional import test_generic
from tests.functional.conftest import new_tenant
from tests.functional.conftest import state_file
from tests.functional.conftest import wait_op
from tests.functional.test_generic import tcp_echo

# The generic echo service of test_generic, which also records what the
# app can see: its environment and the directory the secret was left in.
RUN = (b"#!/bin/sh\nenv > /var/lib/service/env\n"
       b"ls -a /etc/mec-conpaas > /var/lib/service/etc-ls 2>&1\n"
       + test_generic.RUN.split(b"\n", 1)[1])

PROBE = """
import concurrent.futures, json, socket, sys
def probe(target):
    addr, port, source = target
    s = socket.socket()
    s.settimeout(1.5)
    try:
        if source:
            s.bind((source, 0))
        s.connect((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()
targets = json.loads(sys.argv[1])
with concurrent.futures.ThreadPoolExecutor(len(targets)) as ex:
    print(json.dumps(list(ex.map(probe, targets))))
"""


def bundle(path):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("run.sh")
        info.size, info.mode = len(RUN), 0o755
        tar.addfile(info, io.BytesIO(RUN))
    return path


def container_netns(edge, ap, instance_id):
    """/proc/PID/ns/net of a task inside the instance's container."""
    ap_ns = os.stat("/run/netns/" + edge.net.netns(ap)).st_ino
    for tasks in glob.glob("/sys/fs/cgroup/freezer/machine/*.partition/"
                           "*-mec-%s.libvirt-lxc/tasks" % instance_id):
        for pid in open(tasks).read().split():
            path = "/proc/%s/ns/net" % pid
            try:
                if os.stat(path).st_ino != ap_ns:  # not libvirt's controller
                    return path
            except OSError:
                continue
    raise AssertionError("no task of instance %s found" % instance_id)


def probe(prefix, targets):
    """Which of ``[(addr, port, source or None)]`` accept a connection."""
    res = subprocess.run(prefix + [sys.executable, "-c", PROBE, json.dumps(targets)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return dict(zip([(a, p) if s is None else (a, p, s) for a, p, s in targets],
                    json.loads(res.stdout)))


def agent_call(method, addr, path, secret=None):
    req = urllib.request.Request("http://%s:8999%s" % (addr, path), method=method,
                                 data=b"{}" if method == "POST" else None)
    if secret:
        req.add_header("Authorization", "Bearer " + secret)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def two_tenants(edge, admin, tmp_path_factory):
    path = bundle(str(tmp_path_factory.mktemp("iso") / "echo.tar.gz"))
    a, b = new_tenant(edge, "iso-a"), new_tenant(edge, "iso-b")
    for client, name in ((a, "svc-a"), (b, "svc-b")):
        wait_op(client, client.create_service("generic", name, node="ap-1", bundle=path))
        wait_op(client, client.scale(name, 2, node="ap-2"))
    inst = {}
    for client, name in ((a, "svc-a"), (b, "svc-b")):
        svc = client.service(name)
        for i in svc["instances"]:
            inst[name[-1] + i["node"][-1]] = dict(i, port=svc["port"])
    assert sorted(inst) == ["a1", "a2", "b1", "b2"], inst
    yield a, b, inst
    for client, name in ((a, "svc-a"), (b, "svc-b")):
        wait_op(client, client.delete_service(name))
    # The per-service sets went with the services (applied in the
    # background, milliseconds after the last proxy switch).
    deadline = time.monotonic() + 5
    for ap in edge.net.aps:
        while True:
            rules = subprocess.run(["ip", "netns", "exec", edge.net.netns(ap), "nft",
                                    "list", "table", "inet", isolation.TABLE],
                                   capture_output=True, text=True, check=True).stdout
            if "svc_" not in rules:
                break
            assert time.monotonic() < deadline, rules
            time.sleep(0.1)


def test_a_container_reaches_its_peers_and_no_other_tenant(edge, two_tenants):
    _, _, inst = two_tenants
    a1, a2, b1, b2 = (inst[k] for k in ("a1", "a2", "b1", "b2"))
    gateway = edge.net.bridge_address("ap-1")
    nsenter = ["nsenter", "--net=" + container_netns(edge, "ap-1", a1["id"])]
    seen = probe(nsenter, [
        (a2["address"], 8080, None), (a2["address"], 8999, None),  # peer, other AP
        (b1["address"], 8080, None), (b1["address"], 8999, None),  # same bridge
        (b2["address"], 8080, None), (b2["address"], 8999, None),  # other AP
        (gateway, b1["port"], None),        # the AP's endpoint of B: public
        (edge.net.bridge_address("ap-2"), 9681, None),  # a node agent
        (gateway, 9681, None)])
    assert seen == {
        (a2["address"], 8080): True, (a2["address"], 8999): True,
        (b1["address"], 8080): False, (b1["address"], 8999): False,
        (b2["address"], 8080): False, (b2["address"], 8999): False,
        (gateway, b1["port"]): True,
        (edge.net.bridge_address("ap-2"), 9681): False, (gateway, 9681): False}
    # Across the backbone the other way round too, and on ap-2's bridge.
    seen = probe(["nsenter", "--net=" + container_netns(edge, "ap-2", b2["id"])], [
        (b1["address"], 8080, None), (a1["address"], 8080, None),
        (a2["address"], 8080, None)])
    assert seen == {(b1["address"], 8080): True, (a1["address"], 8080): False,
                    (a2["address"], 8080): False}


def test_an_instance_cannot_borrow_another_address(edge, two_tenants):
    _, _, inst = two_tenants
    a1 = inst["a1"]
    nsenter = ["nsenter", "--net=" + container_netns(edge, "ap-1", a1["id"])]
    out = subprocess.run(nsenter + ["ip", "-o", "-4", "addr", "show"], check=True,
                         capture_output=True, text=True).stdout
    ifname = next(line.split()[1] for line in out.splitlines()
                  if " %s/" % a1["address"] in line)
    borrowed = str(edge.net.bridge_address("ap-1")).rsplit(".", 1)[0] + ".200"
    subprocess.run(nsenter + ["ip", "addr", "add", borrowed + "/32", "dev", ifname],
                   check=True)
    try:
        gateway = edge.net.bridge_address("ap-1")
        seen = probe(nsenter, [(gateway, a1["port"], None),
                               (gateway, a1["port"], borrowed)])
        assert seen == {(gateway, a1["port"]): True,
                        (gateway, a1["port"], borrowed): False}
    finally:
        subprocess.run(nsenter + ["ip", "addr", "del", borrowed + "/32", "dev", ifname])


def test_wifi_users_reach_endpoints_not_instances(edge, two_tenants):
    _, _, inst = two_tenants
    client_ns = ["ip", "netns", "exec", edge.net.client_netns("ap-1")]
    seen = probe(client_ns, [(inst[k]["address"], port, None)
                             for k in ("a1", "b1", "b2") for port in (8080, 8999)])
    assert not any(seen.values()), seen
    # The endpoint works, and reaches the instance on the other AP as well.
    for k in ("b1", "a1"):
        assert tcp_echo(edge, "ap-1", inst[k]["port"], "hi").startswith("echo hi from ")


def test_service_agent_api_needs_the_instance_secret(edge, two_tenants):
    _, _, inst = two_tenants
    a1, b1 = inst["a1"], inst["b1"]
    token = open(edge.path("nodes", "ap-1", "node-agent.token")).read().strip()
    secret = isolation.agent_secret(token, a1["id"])
    other = isolation.agent_secret(token, b1["id"])
    addr = a1["address"]  # the master (this namespace) may reach every agent
    for method, path in (("POST", "/notify"), ("POST", "/interrupt"), ("GET", "/logs"),
                         ("POST", "/start"), ("POST", "/stop"), ("POST", "/restore")):
        assert agent_call(method, addr, path)[0] == 401
        assert agent_call(method, addr, path, other)[0] == 401  # B's secret
    assert agent_call("GET", addr, "/health") == (200, {"healthy": True})
    status, body = agent_call("GET", addr, "/health", secret)
    assert status == 200 and body["state"] == "RUNNING", body
    assert agent_call("POST", addr, "/interrupt", secret)[0] == 200
    # The app never saw it: not in its environment, its file gone (the
    # directory, the instance root's own, lists empty).
    env = state_file(edge, "ap-1", a1["id"], "env")
    assert "MY_IP=" + addr in env and secret not in env
    assert state_file(edge, "ap-1", a1["id"], "etc-ls").split() == [".", ".."]


def test_tenants_see_nodes_but_not_others_instances(edge, admin, two_tenants):
    a, _, inst = two_tenants
    ids = {k: v["id"] for k, v in inst.items()}

    def reported(client):
        return {n["name"]: set(n["report"].get("containers", {}))
                for n in client.nodes()}
    deadline = time.monotonic() + 20  # until a heartbeat carries all four
    while not {ids["a1"], ids["b1"]} <= reported(admin)["ap-1"]:
        assert time.monotonic() < deadline, reported(admin)
        time.sleep(0.5)
    while not {ids["a2"], ids["b2"]} <= reported(admin)["ap-2"]:
        assert time.monotonic() < deadline, reported(admin)
        time.sleep(0.5)
    mine = reported(a)
    assert sorted(mine) == sorted(edge.net.aps)
    assert ids["a1"] in mine["ap-1"] and ids["a2"] in mine["ap-2"]
    assert not (ids["b1"] in mine["ap-1"] or ids["b2"] in mine["ap-2"]), mine
    one = a.node("ap-1")
    assert one["state"] == "up" and set(one["report"]["containers"]) <= {ids["a1"]}
