"""Joining the embedded edge (issue 11): the edge's own access points
joined with the edge's join token and are recorded in the allocator with
their fixed networks; a new node joining gets an allocation, the other
access points' node agents install routes to its subnets from their
heartbeat answers, and remove-node (node delete) takes them away again."""
import os
import subprocess
import time

import pytest
from oslo_config import cfg

from mec_conpaas.agents.node import httpserver
from mec_conpaas.agents.node import joining
from mec_conpaas.cli import client as client_mod
from mec_conpaas.conf import join as join_conf
from mec_conpaas.conf import node_agent as node_conf
from mec_conpaas.conf import paths as paths_conf

PROTO = "201"


def manage(edge, *args):
    return subprocess.run([edge._tool("mec-conpaas-manage"), "--config-file",
                           edge.path("master", "mec-conpaas.conf")] + list(args),
                          check=True, capture_output=True, text=True).stdout.strip()


def agent_routes(edge, ap):
    out = subprocess.run(["ip", "-n", edge.net.netns(ap), "route", "show", "proto",
                          PROTO], capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: line for line in out.splitlines()}


def wait(what, predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail("%s within %d s" % (what, timeout))


@pytest.fixture
def node_conf_for(tmp_path):
    """The settings a flashed node's agent has (its own ConfigOpts)."""
    def make(edge, token, state="node"):
        conf = cfg.ConfigOpts()
        for mod in (paths_conf, node_conf, join_conf):
            mod.register_opts(conf)
        conf([], project="mec-conpaas-test", default_config_files=[])
        conf.set_override("state_path", str(tmp_path / state))
        conf.set_override("manager_url", edge.manager_url(), group="node_agent")
        conf.set_override("registration_token", token, group="node_agent")
        return conf
    return make


def test_edge_aps_are_recorded_with_their_fixed_networks(edge, admin):
    for ap in edge.net.aps:
        alloc = admin.node(ap)["allocation"]
        spec = edge.topo["nodes"][ap]
        assert alloc["source"] == "registered"
        assert alloc["instance_network"] == spec["instance_network"]
        assert alloc["client_network"] == spec["client_network"]
        assert alloc["availability_zone"] == ap
    # The edge's own APs route each other statically (edge/network.py):
    # their agents leave those routes alone.
    for ap in edge.net.aps:
        assert agent_routes(edge, ap) == {}


def test_a_joining_node_gets_routes_on_every_ap_and_remove_node_takes_them(
        edge, admin, node_conf_for):
    token = manage(edge, "node-token", "create", "--uses", "1", "--expires-in", "600",
                   "--description", "test_join")
    conf = node_conf_for(edge, token)
    member = joining.Membership(conf)
    body = {"id": "5f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b", "name": "flashed-pi",
            "identity": "serial:functest", "hostname": "flashed-pi",
            "mac": "02:00:00:00:00:99"}
    answer = member.join(body)
    alloc = answer["allocation"]
    assert alloc["source"] == "joined" and alloc["wifi_channel"] in (1, 6, 11)
    taken = {admin.node(ap)["allocation"]["instance_network"] for ap in edge.net.aps}
    assert alloc["instance_network"] not in taken
    # The token was single-use: a second node (its own state, so no
    # credential) is refused, and told why.
    with pytest.raises(joining.JoinRefused, match="used up"):
        joining.Membership(node_conf_for(edge, token, "other")).join(
            dict(body, identity="serial:other", name="other-pi"))
    # It registers with its own credential from the master's address (a
    # node every AP reaches), as its agent would, and heartbeats once.
    url = edge.manager_url()
    address = edge.net.master_address()
    httpserver.call("POST", url + "/v1/nodes/register", member.credential, {
        "id": body["id"], "name": "flashed-pi", "hostname": "flashed-pi",
        "mac": body["mac"], "address": address, "agent_port": 9,
        "agent_token": "unused", "container_backend": "none",
        "instance_network": alloc["instance_network"]})
    hb = httpserver.call("POST", url + "/v1/nodes/%s/heartbeat" % body["id"],
                         member.credential, {"report": {}})
    assert hb["allocation"] == alloc
    shown = admin.node("flashed-pi")
    assert shown["allocation"]["number"] == alloc["number"]
    start = time.monotonic()
    try:
        # Every AP's node agent installs routes to both of its subnets.
        for ap in edge.net.aps:
            routes = wait("routes to flashed-pi on %s" % ap, lambda ap=ap: (
                lambda r: r if {alloc["instance_network"], alloc["client_network"]}
                <= set(r) else None)(agent_routes(edge, ap)))
            assert "via" in routes[alloc["instance_network"]]
        appeared = time.monotonic() - start
    finally:
        admin.delete_node("flashed-pi")
    for ap in edge.net.aps:
        wait("routes to flashed-pi gone from %s" % ap,
             lambda ap=ap: agent_routes(edge, ap) == {})
    print("\nroutes on all APs %.1f s after its heartbeat; gone %.1f s after "
          "node delete" % (appeared, time.monotonic() - start - appeared))
    # Its credential went with it, and so did its allocation.
    with pytest.raises(Exception) as e:
        httpserver.call("POST", url + "/v1/nodes/%s/heartbeat" % body["id"],
                        member.credential, {"report": {}})
    assert getattr(e.value, "remote_status", None) == 401
    with pytest.raises(client_mod.ApiError):
        admin.node("flashed-pi")
    assert os.stat(conf.join.credential_file).st_mode & 0o777 == 0o600
