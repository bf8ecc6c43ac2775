import os

import pytest

from mec_conpaas import exception
from mec_conpaas.manager import topology as topology_mod
from mec_conpaas.policies import farcloud
from mec_conpaas.policies import placement

CLOUD_TOPO = os.path.join(os.path.dirname(topology_mod.DEFAULT),
                          "edge-topology-cloud.yaml")


def _setup():
    topo = topology_mod.load(CLOUD_TOPO)
    names = list(topo["nodes"])
    return topo, placement.distances(topo, names), farcloud.cloud_nodes(topo)


def _nodes(used, max_ap=2, max_cloud=16):
    return {n: {"max_instances": max_cloud if n.startswith("cloud") else max_ap,
                "used": used.get(n, 0), "up": True} for n in
            ("ap-1", "ap-2", "ap-3", "cloud-1")}


def test_cloud_nodes_come_from_the_topology():
    topo, _, clouds = _setup()
    assert clouds == {"cloud-1"}
    assert farcloud.cloud_nodes(topology_mod.load()) == set()
    assert farcloud.cloud_nodes(None) == set()


def test_edge_first_even_though_the_cloud_is_emptier():
    _, dist, clouds = _setup()
    # Least loaded would be the cloud (0/16); the edge has room: the edge.
    chosen = farcloud.place(3, None, _nodes({"ap-1": 1}), dist, clouds)
    assert "cloud-1" not in chosen and len(chosen) == 3


def test_only_what_no_access_point_can_take_goes_to_the_cloud():
    _, dist, clouds = _setup()
    chosen = farcloud.place(3, "ap-2", _nodes({"ap-1": 2, "ap-2": 1, "ap-3": 2}),
                            dist, clouds)
    assert chosen == ["ap-2", "cloud-1", "cloud-1"]


def test_full_cloud_too_names_the_free_slots():
    _, dist, clouds = _setup()
    used = {"ap-1": 2, "ap-2": 2, "ap-3": 2, "cloud-1": 15}
    with pytest.raises(exception.InsufficientCapacity, match="only 1 free"):
        farcloud.place(2, None, _nodes(used), dist, clouds)


def test_without_cloud_nodes_it_is_plain_placement():
    dist = placement.distances(None, ["ap-1", "ap-2"])
    nodes = {n: {"max_instances": 1, "used": 0, "up": True} for n in ("ap-1", "ap-2")}
    assert farcloud.place(2, None, nodes, dist, set()) == \
        placement.place(2, None, nodes, dist)


def test_return_when_an_access_point_has_room_nearest_first():
    _, dist, clouds = _setup()
    svcs = [{"id": "a", "home": "cloud-1", "on_home": 1},
            {"id": "b", "home": "cloud-1", "on_home": 1},
            {"id": "c", "home": "ap-3", "on_home": 1}]
    # ap-1 (nearest the cloud) has one slot, ap-3 one: a gets ap-1, b ap-3,
    # c is not on the cloud.
    out = farcloud.returns(svcs, _nodes({"ap-1": 1, "ap-2": 2, "ap-3": 1}),
                           dist, clouds)
    assert out == {"a": "ap-1", "b": "ap-3"}


def test_no_return_while_the_edge_is_full_or_too_small():
    _, dist, clouds = _setup()
    full = _nodes({"ap-1": 2, "ap-2": 2, "ap-3": 2})
    assert farcloud.returns([{"id": "a", "home": "cloud-1", "on_home": 1}],
                            full, dist, clouds) == {}
    # Three instances never fit one access point of two slots.
    assert farcloud.returns([{"id": "a", "home": "cloud-1", "on_home": 3}],
                            _nodes({}), dist, clouds) == {}


def test_a_service_at_home_on_the_cloud_grows_there():
    _, dist, clouds = _setup()
    assert farcloud.place(2, "cloud-1", _nodes({}), dist, clouds) == ["cloud-1"] * 2
