"""The QoS spec through the API, admission by size and priority (with the
evictions it starts), and an auto-scaling round's operations: a real
store and service layer, a recording engine (no workflow runs)."""
from sqlalchemy import select

from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.manager import qos
from tests.unit.test_api_nodes import add_service
from tests.unit.test_api_nodes import edge  # noqa: F401  (the fixture)

SMALL = {"cpus": 1.5, "memory_mb": 512, "reserve_cpus": 0.5, "reserve_memory_mb": 128}
PI = {"cpus": 4.0, "memory_mb": 1024, "reserve_cpus": 0.5, "reserve_memory_mb": 128}


def report(name, cap, containers=None):
    with db.session_scope() as s:
        node = s.scalar(select(models.Node).where(models.Node.name == name))
        node.report = {"capacity": cap, "containers": containers or {}}


def set_qos(name, **spec):
    with db.session_scope() as s:
        svc = s.scalar(select(models.Service).where(models.Service.name == name))
        for k, v in spec.items():
            setattr(svc, k, v)
        return [i.id for i in svc.instances]


def test_create_with_qos_admits_by_priority_and_evicts_elsewhere(edge):  # noqa: F811
    admin, alice, manager = edge
    for n, cap in (("ap-1", SMALL), ("ap-2", PI), ("ap-3", PI)):
        report(n, cap)
    add_service("low", "alice", "ap-1", ["ap-1", "ap-1"])  # 2 x 0.5 cpus: full
    low_ids = set_qos("low", priority=10)
    # Equal or lower priority: refused, with the reason, nothing stored.
    status, body = alice("POST", "/v1/services", data={
        "type": "web", "name": "mid", "node": "ap-1", "priority": "10"})
    assert status == 409 and "full for priority 10" in body["error"]["message"], body
    status, body = alice("POST", "/v1/services", data={
        "type": "web", "name": "bad", "priority": "300"})
    assert status == 400 and "priority must be an integer from 0 to 100" in \
        body["error"]["message"], body
    # Higher: admitted, the newest low instance evicted to ap-2 first.
    status, body = alice("POST", "/v1/services", data={
        "type": "web", "name": "high", "node": "ap-1", "priority": "90",
        "latency_objective_ms": "20", "max_instances": "2"})
    assert status == 202, body
    [after] = body["operation"]["params"]["after"]
    assert manager.engine.submitted == [after, body["operation"]["id"]]
    assert body["service"]["qos"] == {"priority": 90, "latency_objective_ms": 20.0,
                                      "max_users": None, "min_instances": 1,
                                      "max_instances": 2}
    with db.session_scope() as s:
        op = s.get(models.Operation, after)
        assert (op.kind, op.service_name, op.params["moves"]) == (
            "evict", "low", [{"instance": low_ids[1], "to": "ap-2"}])
        assert op.step == ("evicted from ap-1 to ap-2 (priority 10): to admit high "
                           "(priority 90) on ap-1"), op.step
    # The low service is held by its eviction: no other operation on it.
    status, body = alice("POST", "/v1/services/low/scale", json={"count": 1})
    assert status == 409 and "busy with operation %s" % after in body["error"]["message"]


def test_a_round_resizes_by_latency_and_respects_the_reserve(edge):  # noqa: F811
    admin, alice, manager = edge
    manager.conf.set_override("autoscale_interval", 1, group="qos")
    try:
        add_service("hot", "alice", "ap-2", ["ap-2"])
        add_service("cool", "alice", "ap-3", ["ap-3"], port=20001)
        [hot] = set_qos("hot", latency_objective_ms=10.0)
        [cool] = set_qos("cool", latency_objective_ms=10.0)
        with db.session_scope() as s:  # grown by one unit before
            s.get(models.Instance, cool).cpus = 0.75
            s.get(models.Instance, cool).memory_mb = 128
        report("ap-1", PI)
        report("ap-2", PI, {hot: {"latency_ms": 35.0}})
        report("ap-3", PI, {cool: {"latency_ms": 1.0}})
        loop = qos.Loop(manager.cluster, manager.engine, manager.services)
        started = loop.round()
        with db.session_scope() as s:
            ops = sorted((o.service_name, o.kind, o.params["change"], o.params["cpus"],
                          o.params["memory_mb"]) for o in
                         (s.get(models.Operation, i) for i in started))
        assert ops == [("cool", "resize", "shrink", 0.5, 64),
                       ("hot", "resize", "grow", 0.75, 128)], ops
        # Both services are held now: the next round starts nothing.
        assert loop.round() == []
        # The reserve: a node whose free room is less than a unit grows nothing.
        with db.session_scope() as s:
            for o in s.scalars(select(models.Service)):
                o.operation_id = None
        report("ap-2", dict(PI, cpus=1.0), {hot: {"latency_ms": 35.0}})
        with db.session_scope() as s:
            plans, _, _ = loop.plan(s)
        [blocked] = plans["ap-2"]
        assert blocked["action"] == "blocked" and "no room" in blocked["reason"]
    finally:
        manager.conf.clear_override("autoscale_interval", group="qos")
