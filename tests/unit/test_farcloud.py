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


def test_return_needs_room_for_the_size_not_only_a_slot():
    _, dist, clouds = _setup()
    nodes = _nodes({"ap-1": 1, "ap-2": 1})
    for n, free in (("ap-1", 0.25), ("ap-2", 1.0), ("ap-3", 0.0)):
        nodes[n].update(free_cpus=free, free_memory_mb=512)
    svcs = [{"id": "a", "home": "cloud-1", "on_home": 1, "need": (0.5, 128)},
            {"id": "b", "home": "cloud-1", "on_home": 1, "need": (0.5, 128)},
            {"id": "c", "home": "cloud-1", "on_home": 1, "need": (0.5, 128)}]
    # ap-1 (nearest) has a slot but not the cpus; ap-2 room for one; ap-3
    # two slots and no cpus: only a returns, to ap-2.
    assert farcloud.returns(svcs, nodes, dist, clouds) == {"a": "ap-2"}


def _capacity_node(cpus, containers):
    return {"cpus": cpus, "memory_mb": 1024, "reserve_cpus": 0.5,
            "reserve_memory_mb": 128, "up": True, "schedulable": True,
            "containers": {i: {"service": i, "priority": prio, "cpus": 0.5,
                               "memory_mb": 128, "seq": seq}
                           for seq, (i, prio) in enumerate(containers)}}


def test_edge_first_puts_every_cloud_node_behind_every_access_point():
    topo, dist, clouds = _setup()
    # A topology where the cloud is nearer ap-1 than ap-3 is.
    topo["links"] = [link if link[1] != "cloud-1" else (link[0], link[1], 3)
                     for link in topo["links"]]
    near = placement.distances(topo, list(topo["nodes"]))
    assert near["ap-1"]["cloud-1"] < near["ap-1"]["ap-3"]
    far = farcloud.edge_first(near, clouds)
    assert far["ap-1"]["cloud-1"] > far["ap-1"]["ap-3"]
    assert far["ap-1"]["ap-3"] == near["ap-1"]["ap-3"]
    assert far["cloud-1"]["cloud-1"] == 0
    assert farcloud.edge_first(dist, set()) is dist


def test_admission_evicts_to_the_cloud_only_when_no_access_point_can_take_it():
    """ENORM's admission with the far cloud: the low priority on full ap-1
    goes to another access point while one has room, else to the cloud."""
    from mec_conpaas.policies import admission
    _, dist, clouds = _setup()
    dist = farcloud.edge_first(dist, clouds)
    # Each access point: room for two 0.5-cpu instances (1.5 - 0.5 reserve).
    cluster = {"ap-1": _capacity_node(1.5, [("fill", 90), ("low", 10)]),
               "ap-2": _capacity_node(1.5, [("x2", 90)]),
               "ap-3": _capacity_node(1.5, [("x3", 90), ("y3", 90)]),
               "cloud-1": _capacity_node(16.0, [])}
    d = admission.admit("ap-1", cluster["ap-1"], 0.5, 128, 90, cluster, dist)
    assert d.admit and d.evict == {"low": "ap-2"}, d
    cluster["ap-2"]["containers"]["y2"] = dict(cluster["ap-2"]["containers"]["x2"])
    d = admission.admit("ap-1", cluster["ap-1"], 0.5, 128, 90, cluster, dist)
    assert d.admit and d.evict == {"low": "cloud-1"}, d
    # Without a cloud node with room: refused, nothing evicted.
    del cluster["cloud-1"]
    d = admission.admit("ap-1", cluster["ap-1"], 0.5, 128, 90, cluster, dist)
    assert not d.admit and "no other node can take" in d.reason


# -- offload because the objective allows it; return near the users ------

WIFI_MS = 5.0


def _svc(sid, home, priority=50, objective=None, service_ms=2.0, users=(), on_home=1,
         busy=False):
    return {"id": sid, "name": sid, "home": home, "on_home": on_home,
            "need": (0.5, 128), "priority": priority, "objective_ms": objective,
            "service_ms": service_ms, "users": list(users), "busy": busy}


def test_predicted_latency_is_round_trips_over_wifi_and_backbone_plus_service_time():
    _, dist, _ = _setup()
    # ap-3 -> cloud-1: 2 + 2 + 30 ms one way; two round trips on each hop.
    assert farcloud.predicted_ms(["ap-3"], "cloud-1", dist, WIFI_MS, 10.0) == \
        farcloud.ROUND_TRIPS * 2 * (WIFI_MS + 34.0) + 10.0
    # The farthest user counts.
    assert farcloud.predicted_ms(["ap-1", "ap-3"], "cloud-1", dist, WIFI_MS, 0.0) == \
        farcloud.predicted_ms(["ap-3"], "cloud-1", dist, WIFI_MS, 0.0)


def test_the_cloud_tolerated_only_with_an_objective_met_with_the_margin():
    _, dist, _ = _setup()
    need = farcloud.predicted_ms(["ap-3"], "cloud-1", dist, WIFI_MS, 2.0)  # 158 ms
    svc = _svc("a", "ap-3", objective=need / 0.75)
    assert farcloud.tolerates(svc, "cloud-1", dist, WIFI_MS, 0.25)
    assert not farcloud.tolerates(dict(svc, objective_ms=need / 0.75 - 1), "cloud-1",
                                  dist, WIFI_MS, 0.25)
    # No objective, or no measured computing latency: nothing says it is.
    assert not farcloud.tolerates(dict(svc, objective_ms=None), "cloud-1", dist,
                                  WIFI_MS, 0.25)
    assert not farcloud.tolerates(dict(svc, service_ms=None), "cloud-1", dist,
                                  WIFI_MS, 0.25)


def test_needs_the_edge_only_on_the_cloud_with_users_and_the_objective_missed():
    _, dist, clouds = _setup()
    assert farcloud.needs_edge(_svc("n", "cloud-1", objective=50, users=["ap-3"]),
                               clouds, dist, WIFI_MS, 0.25)
    assert farcloud.needs_edge(_svc("n", "cloud-1", users=["ap-3"]), clouds, dist,
                               WIFI_MS, 0.25)  # no objective: the edge is nearer
    assert not farcloud.needs_edge(_svc("n", "cloud-1", objective=50), clouds, dist,
                                   WIFI_MS, 0.25)  # no users
    assert not farcloud.needs_edge(_svc("n", "cloud-1", objective=1000, users=["ap-3"]),
                                   clouds, dist, WIFI_MS, 0.25)  # the cloud will do
    assert not farcloud.needs_edge(_svc("n", "ap-3", objective=50, users=["ap-3"]),
                                   clouds, dist, WIFI_MS, 0.25)


def test_offload_a_tolerant_low_priority_to_make_room_for_one_that_needs_the_edge():
    _, dist, clouds = _setup()
    nodes = _nodes({"ap-1": 2, "ap-2": 2, "ap-3": 2, "cloud-1": 1})
    svcs = [_svc("need", "cloud-1", priority=50, objective=40, users=["ap-3"]),
            _svc("fill", "ap-3", priority=90),
            _svc("tol", "ap-3", priority=10, objective=1000)]
    [d] = farcloud.offloads(svcs, nodes, dist, clouds, wifi_ms=WIFI_MS)
    assert (d["id"], d["to"], d["source"], d["for"]) == ("tol", "cloud-1", "ap-3", "need")
    assert "objective 1000 ms met from cloud-1" in d["reason"], d
    assert "need (priority 50" in d["reason"] and "objective 40 ms" in d["reason"], d
    # Once it left, the needy one returns there, before the offloaded one.
    nodes["ap-3"]["used"], nodes["cloud-1"]["used"] = 1, 2
    back = farcloud.returns([svcs[2] | {"home": "cloud-1"}, svcs[0]], nodes, dist,
                            clouds, wifi_ms=WIFI_MS, margin=0.25)
    assert back == {"need": "ap-3"}


def test_no_offload_of_a_higher_priority_an_intolerant_one_or_for_no_users():
    _, dist, clouds = _setup()
    nodes = _nodes({"ap-1": 2, "ap-2": 2, "ap-3": 2})
    need = _svc("need", "cloud-1", priority=50, objective=40, users=["ap-3"])
    for victim in (_svc("tol", "ap-3", priority=60, objective=1000),  # above it
                   _svc("tol", "ap-3", priority=10, objective=100),   # cloud misses
                   _svc("tol", "ap-3", priority=10, objective=1000, service_ms=None),
                   _svc("tol", "ap-3", priority=10, objective=1000, busy=True)):
        assert farcloud.offloads([need, victim], nodes, dist, clouds,
                                 wifi_ms=WIFI_MS) == [], victim
    tol = _svc("tol", "ap-3", priority=10, objective=1000)
    assert farcloud.offloads([dict(need, users=[]), tol], nodes, dist, clouds,
                             wifi_ms=WIFI_MS) == []
    # Room somewhere at the edge: it returns there instead, nobody moves.
    nodes["ap-1"]["used"] = 1
    assert farcloud.offloads([need, tol], nodes, dist, clouds, wifi_ms=WIFI_MS) == []


def test_offload_only_as_much_as_makes_room_and_not_onto_a_full_cloud():
    _, dist, clouds = _setup()
    nodes = _nodes({"ap-1": 2, "ap-2": 2, "ap-3": 2})
    need = _svc("need", "cloud-1", priority=50, objective=40, users=["ap-3"])
    t1 = _svc("t1", "ap-3", priority=10, objective=1000)
    t2 = _svc("t2", "ap-3", priority=20, objective=1000)
    assert [d["id"] for d in farcloud.offloads([need, t2, t1], nodes, dist, clouds,
                                               wifi_ms=WIFI_MS)] == ["t1"]
    nodes["cloud-1"]["used"] = 16
    assert farcloud.offloads([need, t2, t1], nodes, dist, clouds, wifi_ms=WIFI_MS) == []


def test_return_goes_to_the_access_point_nearest_its_users():
    _, dist, clouds = _setup()
    nodes = _nodes({"ap-1": 1, "ap-2": 1, "ap-3": 1})
    svc = _svc("a", "cloud-1")
    # No users known: the nearest to the cloud, as before.
    assert farcloud.returns([svc], nodes, dist, clouds) == {"a": "ap-1"}
    assert farcloud.returns([dict(svc, users=["ap-3"])], nodes, dist, clouds) == \
        {"a": "ap-3"}
    # ... where it has room; else the nearest to them that has.
    nodes["ap-3"]["used"] = 2
    assert farcloud.returns([dict(svc, users=["ap-3"])], nodes, dist, clouds) == \
        {"a": "ap-2"}


def test_no_return_to_a_node_an_operation_in_flight_is_placing_on():
    """test_farcloud_evict's extra migration: ap-1's slot freed by the
    eviction is promised to the create that waits for it."""
    _, dist, clouds = _setup()
    nodes = _nodes({"ap-1": 1, "ap-2": 2, "ap-3": 2})
    svc = _svc("low", "cloud-1")
    assert farcloud.returns([svc], nodes, dist, clouds) == {"low": "ap-1"}
    busy = farcloud.promised({"count": 1, "node": "ap-1", "pin": True, "after": ["x"]})
    assert busy == {"ap-1"}
    assert farcloud.returns([svc], nodes, dist, clouds, busy) == {}
    assert farcloud.promised({"to": "ap-2", "source": "cloud-1"}) == {"ap-2"}
    assert farcloud.promised({"moves": [{"instance": "i", "to": "cloud-1"}],
                              "home": "cloud-1"}) == {"cloud-1"}
    assert farcloud.promised({"count": 2}) == set()
