"""The nova backend's route re-homing, in a network namespace of its own: neutron's
linuxbridge agent enslaves the provider interface to its brq bridge after the AP's
on-link route to the provider network was written on that interface."""
import os
import subprocess
import uuid

import pytest

from mec_conpaas.agents.node import nova

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")


@pytest.fixture
def netns():
    name = "mecrt-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def ip(ns, *argv):
    return subprocess.run(["ip", "-n", ns] + list(argv), check=True, capture_output=True,
                          text=True).stdout


def test_on_link_route_follows_its_interface_onto_the_bridge(netns):
    # veth pairs, as the test bed's APs have (this kernel has no dummy module).
    ip(netns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p")
    ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    ip(netns, "addr", "add", "10.231.0.12/24", "dev", "eth0")
    for dev in ("eth0", "eth0p", "eth1", "eth1p"):
        ip(netns, "link", "set", dev, "up")
    # What mec-conpaas-network writes before any nova server landed here.
    ip(netns, "route", "add", "10.232.0.0/24", "dev", "eth1", "src", "10.231.0.12")
    # A route with a gateway and the kernel's own prefix route are left where they are.
    ip(netns, "route", "add", "10.100.1.0/24", "via", "10.231.0.11", "proto", "200")
    assert nova.rehome_routes(ip=("ip", "-n", netns)) == []  # nothing enslaved yet

    ip(netns, "link", "add", "brqdeadbeef-00", "type", "bridge")
    ip(netns, "link", "set", "brqdeadbeef-00", "up")
    ip(netns, "link", "set", "eth1", "master", "brqdeadbeef-00")
    moved = nova.rehome_routes(ip=("ip", "-n", netns))

    assert moved == [("10.232.0.0/24", "eth1", "brqdeadbeef-00")]
    routes = ip(netns, "route", "show")
    assert "10.232.0.0/24 dev brqdeadbeef-00 scope link src 10.231.0.12" in routes, routes
    assert "dev eth1" not in routes, routes
    assert "10.100.1.0/24 via 10.231.0.11 dev eth0 proto 200" in routes, routes
    assert nova.rehome_routes(ip=("ip", "-n", netns)) == []  # idempotent
