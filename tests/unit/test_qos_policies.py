"""The QoS policies (ENORM admission, auto-scaling, eviction; PiCasso
replica choice) as the pure functions they are."""
import pytest

from mec_conpaas import exception
from mec_conpaas.manager import topology
from mec_conpaas.policies import admission
from mec_conpaas.policies import autoscale
from mec_conpaas.policies import capacity
from mec_conpaas.policies import eviction
from mec_conpaas.policies import placement
from mec_conpaas.policies import qos
from mec_conpaas.policies import replica

PI = topology.PI3_CAPACITY  # 4 cpus, 1024 MiB, 0.5 cpus + 128 MiB reserved
DIST = {"ap-1": {"ap-1": 0, "ap-2": 2, "ap-3": 4},
        "ap-2": {"ap-1": 2, "ap-2": 0, "ap-3": 2},
        "ap-3": {"ap-1": 4, "ap-2": 2, "ap-3": 0}}


def c(service, priority, cpus=0.5, mem=128, seq=0, **kw):
    return dict(service=service, priority=priority, cpus=cpus, memory_mb=mem,
                base_cpus=cpus, base_memory_mb=mem, seq=seq, **kw)


def node(**containers):
    return dict(PI, containers=containers, up=True, schedulable=True)


def test_reserve_is_never_free():
    n = node()
    assert capacity.allocatable(n) == (3.5, 896)
    assert capacity.fits(n, 3.5, 896)
    assert not capacity.fits(n, 3.51, 1)
    assert not capacity.fits(n, 0.1, 897)


def test_admission_fits_or_evicts_lower_priority_to_another_node():
    full = node(**{"i%d" % k: c("low%d" % k, 10, seq=k) for k in range(7)})
    cluster = {"ap-1": full, "ap-2": node(), "ap-3": node()}
    d = admission.admit("ap-1", node(), 0.5, 128, 50, cluster, DIST)
    assert d.admit and not d.evict
    # Same priority: no eviction, refused with the reason.
    d = admission.admit("ap-1", full, 0.5, 128, 10, cluster, DIST)
    assert not d.admit and "priority 10" in d.reason
    # Higher: the newest of the lowest goes, re-placed on the nearest AP.
    d = admission.admit("ap-1", full, 0.5, 128, 90, cluster, DIST)
    assert d.admit and d.evict == {"i6": "ap-2"}, d
    # More than all lower priorities hold, or the reserve: refused.
    d = admission.admit("ap-1", full, 3.6, 128, 90, cluster, DIST)
    assert not d.admit and "even empty" in d.reason
    # Nowhere to re-place the victim: nothing evicted.
    d = admission.admit("ap-1", full, 0.5, 128, 90, {"ap-1": full}, DIST)
    assert not d.admit and "no other node" in d.reason


def test_eviction_order_and_targets():
    n = node(a=c("s1", 30, seq=1), b=c("s2", 10, seq=1), d=c("s3", 10, seq=2),
             e=c("s4", 80, 2.0, 512))
    # fits already
    assert eviction.victims(node(), 0.5, 128, 50) == []
    # lowest priority, newest first; only below the arriving priority
    assert eviction.victims(n, 0.5, 128, 50) == ["d"]
    assert eviction.victims(n, 1.0, 256, 50) == ["d", "b"]
    assert eviction.victims(n, 0.5, 128, 10) is None
    busy = {"ap-2": node(x=c("x", 1, 3.5, 896)), "ap-3": node(),
            "ap-1": n}
    assert eviction.targets("ap-1", {"d": n["containers"]["d"]}, busy, DIST) == {"d": "ap-3"}
    down = dict(busy, **{"ap-3": dict(node(), up=False)})
    assert eviction.targets("ap-1", {"d": n["containers"]["d"]}, down, DIST) == {"d": None}


def test_eviction_targets_take_a_free_slot_each():
    """Two victims never share an access point's last instance slot,
    however much cpu and memory it has left (manager/farcloud.eviction_view
    says each node's free slots)."""
    n = node(b=c("s2", 10, seq=1), d=c("s3", 10, seq=2))
    one_slot = dict(node(), free_slots=1)
    cluster = {"ap-1": n, "ap-2": one_slot, "ap-3": dict(node(), free_slots=1)}
    victims = {i: n["containers"][i] for i in ("b", "d")}
    assert eviction.targets("ap-1", victims, cluster, DIST) == {"b": "ap-2", "d": "ap-3"}
    cluster["ap-3"]["free_slots"] = 0
    assert eviction.targets("ap-1", victims, cluster, DIST) == {"b": "ap-2", "d": None}
    assert cluster["ap-2"]["free_slots"] == 1  # the caller's view is not changed
    # A node that says nothing of slots is judged by its size alone.
    del cluster["ap-2"]["free_slots"]
    assert eviction.targets("ap-1", victims, cluster, DIST) == {"b": "ap-2", "d": "ap-2"}


def test_autoscale_grows_when_missed_shrinks_when_comfortable():
    n = node(a=c("s1", 50, latency_ms=40.0, objective_ms=20.0))
    [d] = autoscale.plan("ap-1", n, 0.25, 64)
    assert (d["action"], d["cpus"], d["memory_mb"]) == ("grow", 0.75, 192)
    assert "misses the 20.0 ms objective" in d["reason"]
    grown = node(a=dict(c("s1", 50, latency_ms=5.0, objective_ms=20.0), cpus=0.75,
                        memory_mb=192))
    [d] = autoscale.plan("ap-1", grown, 0.25, 64)
    assert (d["action"], d["cpus"], d["memory_mb"]) == ("shrink", 0.5, 128)
    # Between shrink_below and the objective: left alone (no flapping).
    steady = node(a=dict(c("s1", 50, latency_ms=15.0, objective_ms=20.0), cpus=0.75,
                         memory_mb=192))
    assert autoscale.plan("ap-1", steady, 0.25, 64) == []
    # Never below the service's size; unknown latency: left alone.
    assert autoscale.plan("ap-1", node(a=c("s1", 50, latency_ms=1.0,
                                           objective_ms=20.0)), 0.25, 64) == []
    assert autoscale.plan("ap-1", node(a=c("s1", 50, latency_ms=None,
                                           objective_ms=20.0)), 0.25, 64) == []


def test_autoscale_on_a_short_node_evicts_the_lowest_priority_elsewhere():
    others = {"x%d" % k: c("low", 5, seq=k) for k in range(6)}
    n = node(a=c("hi", 90, latency_ms=50.0, objective_ms=20.0), **others)
    assert capacity.free(n) == (0.0, 0)
    cluster = {"ap-1": n, "ap-2": node(), "ap-3": node()}
    out = autoscale.plan("ap-1", n, 0.25, 64, cluster=cluster, dist=DIST)
    assert [d["action"] for d in out] == ["evict", "grow"]
    assert out[0]["id"] == "x5" and out[0]["to"] == "ap-2"
    assert "priority 5" in out[0]["reason"]
    # Nowhere to put the victim: blocked, nothing evicted (replica choice next).
    out = autoscale.plan("ap-1", n, 0.25, 64, cluster={"ap-1": n}, dist=DIST)
    assert [d["action"] for d in out] == ["blocked"]
    # A node that reports less than its containers hold evicts the lowest.
    shrunk = dict(n, cpus=3.0)
    out = autoscale.plan("ap-1", dict(shrunk, containers=others), 0.25, 64,
                         cluster=cluster, dist=DIST)
    assert [d["action"] for d in out] == ["evict"] and out[0]["id"] == "x5"


def test_autoscale_round_over_128_containers_is_fast():
    import time
    big = dict(cpus=128.0, memory_mb=65536, reserve_cpus=1.0, reserve_memory_mb=256,
               containers={"c%03d" % k: c("s%d" % k, k % 100, 0.25, 64, seq=k,
                                           latency_ms=float(k % 40), objective_ms=20.0)
                           for k in range(128)})
    t0 = time.perf_counter()
    out = autoscale.plan("ap-1", big, 0.25, 64)
    assert time.perf_counter() - t0 < 0.05
    missing = [i for i, x in big["containers"].items()
               if x["latency_ms"] > x["objective_ms"]]
    assert sorted(d["id"] for d in out if d["action"] == "grow") == missing


def test_replica_choice_after_picasso():
    nodes = {"ap-1": {"exhaustion": 0.95, "fits": True},
             "ap-2": {"exhaustion": 0.85, "fits": True},
             "ap-3": {"exhaustion": 0.2, "fits": True}}
    # exhausted local and near: the nearest that is not
    assert replica.choose("ap-1", nodes, DIST)[0] == "ap-3"
    nodes["ap-1"]["exhaustion"] = 0.3
    assert replica.choose("ap-1", nodes, DIST)[0] == "ap-1"
    nodes["ap-1"]["fits"] = False
    assert replica.choose("ap-1", nodes, DIST)[0] == "ap-3"
    assert replica.choose("ap-1", {"ap-1": {"exhaustion": 0.99, "fits": True}},
                          DIST)[0] == "ap-1"
    assert replica.choose("ap-1", {"ap-1": {"fits": False}}, DIST)[0] is None
    report = {"cpu_percent": 30.0, "memory": {"total_bytes": 100, "available_bytes": 10}}
    assert replica.exhaustion(report) == 0.9
    assert replica.exhaustion({}) is None


def test_placement_fits_sizes_and_keeps_reserve():
    nodes = {"ap-1": {"max_instances": 8, "used": 0, "up": True,
                      "free_cpus": 0.4, "free_memory_mb": 512},
             "ap-2": {"max_instances": 8, "used": 0, "up": True,
                      "free_cpus": 1.0, "free_memory_mb": 256}}
    assert placement.place(1, "ap-1", nodes, DIST, need=(0.5, 128)) == ["ap-2"]
    assert placement.place(2, "ap-2", nodes, DIST, need=(0.5, 128)) == ["ap-2", "ap-2"]
    with pytest.raises(exception.InsufficientCapacity, match="room for 2"):
        placement.place(3, "ap-2", nodes, DIST, need=(0.5, 128))
    # no size known: slots only, as before
    assert placement.place(1, "ap-1", nodes, DIST) == ["ap-1"]


def test_qos_spec_parse_and_defaults():
    assert qos.of({}) == qos.QoS(priority=50, min_instances=1)
    assert qos.of({"priority": 7, "latency_objective_ms": 20.0}).latency_objective_ms == 20.0
    assert qos.latency_objective_ms({"latency_objective_ms": 5.0}) == 5.0
    spec = qos.parse({"priority": "90", "latency_objective_ms": "12.5",
                      "min_instances": "1", "max_instances": "3"}, count=2)
    assert spec == {"priority": 90, "latency_objective_ms": 12.5, "max_users": None,
                    "min_instances": 1, "max_instances": 3}
    for form, message in (({"priority": "101"}, "priority must be an integer from 0 to 100"),
                          ({"priority": "x"}, "priority must be an integer"),
                          ({"latency_objective_ms": "0"}, "latency_objective_ms must be"),
                          ({"min_instances": "3", "max_instances": "2"}, "above max"),
                          ({"max_instances": "1"}, "outside")):
        with pytest.raises(exception.BadRequest, match=message):
            qos.parse(form, count=2)


def test_topology_capacity_defaults_to_a_pi3():
    assert topology.capacity({}) == PI
    assert topology.capacity({"capacity": {"cpus": 2, "memory_mb": "512"}})["memory_mb"] == 512
    with pytest.raises(exception.BadRequest, match="takes cpus"):
        topology.capacity({"capacity": {"cores": 2}})
    with pytest.raises(exception.BadRequest, match="larger than"):
        topology.capacity({"capacity": {"cpus": 0.25}})
