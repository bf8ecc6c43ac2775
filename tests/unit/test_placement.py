import pytest

from mec_conpaas import exception
from mec_conpaas.policies import placement

TOPO = {"links": [("master", "ap-1", 1.0), ("ap-1", "ap-2", 2.0), ("ap-2", "ap-3", 2.0)]}
NODES = ["ap-1", "ap-2", "ap-3"]


def test_distances_follow_the_line():
    d = placement.distances(TOPO, NODES)
    assert d["ap-1"]["ap-3"] == 4.0 and d["ap-3"]["ap-1"] == 4.0
    assert d["ap-2"]["ap-2"] == 0.0


def test_no_topology_means_all_equal():
    d = placement.distances(None, NODES)
    assert d["ap-1"]["ap-1"] == 0.0 and d["ap-1"]["ap-3"] == 1.0


def test_tiers_nearest_first():
    d = placement.distances(TOPO, NODES)
    near, far = placement.tiers("ap-2", {"a": "ap-1", "b": "ap-3", "c": "ap-1"}, d)
    assert near == ["a", "b", "c"] and far == []
    near, far = placement.tiers("ap-3", {"a": "ap-1", "b": "ap-2"}, d)
    assert near == ["b"] and far == ["a"]


def test_tier_map_per_access_point():
    d = placement.distances(TOPO, NODES)
    inst = {"a": "ap-1", "b": "ap-2", "c": "ap-3"}
    tiers = placement.tier_map(NODES, inst, d)
    assert tiers["ap-1"] == {"a": "local", "b": "spill", "c": "spill"}
    assert tiers["ap-2"] == {"a": "spill", "b": "local", "c": "spill"}
    assert placement.tier_map(["ap-3"], inst, d, "backup") == {
        "ap-3": {"a": "backup", "b": "backup", "c": "local"}}
    # Equally near instances are all local; no instance, no tiers.
    assert placement.tier_map(["ap-2"], {"a": "ap-1", "c": "ap-3"}, d) == {
        "ap-2": {"a": "local", "c": "local"}}
    assert placement.tier_map(NODES, {}, d) == {n: {} for n in NODES}
    with pytest.raises(ValueError):
        placement.tier_map(NODES, inst, d, "nearest")


def nodes(**used):
    return {n: {"max_instances": 2, "used": used.get(n.replace("-", "_"), 0), "up": True}
            for n in NODES}


def test_place_least_loaded_among_nearest_then_widens():
    d = placement.distances(TOPO, NODES)
    assert placement.place(1, "ap-1", nodes(), d) == ["ap-1"]
    assert placement.place(3, "ap-1", nodes(), d) == ["ap-1", "ap-1", "ap-2"]
    assert placement.place(2, "ap-2", nodes(ap_2=2), d) == ["ap-1", "ap-3"]


def test_place_skips_down_nodes_and_checks_capacity():
    d = placement.distances(TOPO, NODES)
    n = nodes()
    n["ap-1"]["up"] = False
    assert placement.place(1, "ap-1", n, d) == ["ap-2"]
    with pytest.raises(exception.InsufficientCapacity, match="only 4 free"):
        placement.place(5, "ap-1", n, d)


def test_victims_farthest_then_newest():
    d = placement.distances(TOPO, NODES)
    inst = [{"id": "a", "node": "ap-1", "seq": 0}, {"id": "b", "node": "ap-3", "seq": 1},
            {"id": "c", "node": "ap-1", "seq": 2}]
    assert [v["id"] for v in placement.victims(2, "ap-1", inst, d)] == ["b", "c"]


def test_place_skips_disabled_nodes():
    d = placement.distances(TOPO, NODES)
    n = nodes()
    n["ap-1"]["schedulable"] = False
    assert placement.place(3, "ap-1", n, d) == ["ap-2", "ap-2", "ap-3"]
    with pytest.raises(exception.InsufficientCapacity, match="only 4 free"):
        placement.place(5, "ap-1", n, d)


def test_evacuate_nearest_then_least_loaded_shared_across_services():
    d = placement.distances(TOPO, NODES)
    n = nodes(ap_1=2, ap_2=1)
    # "web" lives on ap-1; "api" lives on ap-2 with one instance scaled out to ap-1.
    plan = placement.evacuate("ap-1", [{"id": "api", "home": "ap-2", "instances": ["a1"]},
                                       {"id": "web", "home": "ap-1",
                                        "instances": ["w1", "w2"]}], n, d)
    assert plan == {"api": {"moves": [{"instance": "a1", "to": "ap-2"}], "home": None},
                    "web": {"moves": [{"instance": "w1", "to": "ap-3"},
                                      {"instance": "w2", "to": "ap-3"}],
                            "home": "ap-3"}}


def test_evacuate_refuses_without_room_and_ignores_disabled_nodes():
    d = placement.distances(TOPO, NODES)
    n = nodes(ap_1=2, ap_2=1, ap_3=1)
    n["ap-3"]["schedulable"] = False
    with pytest.raises(exception.InsufficientCapacity,
                       match="draining ap-1 needs 2 free instance slot.s. on the other "
                             "up, schedulable nodes but they have 1 .ap-2: 1 of 2 free; "
                             "ap-3: disabled.*nothing was changed"):
        placement.evacuate("ap-1", [{"id": "web", "home": "ap-1",
                                     "instances": ["w1", "w2"]}], n, d)
    assert placement.evacuate("ap-1", [], n, d) == {}
