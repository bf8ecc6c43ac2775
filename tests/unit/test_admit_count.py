"""A create's admission counts all its instances, and a create admitted on
the node it named keeps its instances there (issue 15: one admitted on
ap-1 landed on the cloud node): a real store and service layer, a
recording engine (no workflow runs)."""
from sqlalchemy import select

from mec_conpaas.db import models
from mec_conpaas.db import session as db
from tests.unit.test_api_nodes import add_service
from tests.unit.test_api_nodes import edge  # noqa: F401  (the fixture)
from tests.unit.test_api_qos import PI
from tests.unit.test_api_qos import SMALL
from tests.unit.test_api_qos import report
from tests.unit.test_api_qos import set_qos


def set_slots(name, max_instances):
    with db.session_scope() as s:
        s.scalar(select(models.Node).where(models.Node.name == name)).max_instances = \
            max_instances


def create(api, **form):
    status, body = api("POST", "/v1/services", data=dict(type="web", **form))
    return status, body


def test_admission_counts_every_instance_and_pins_the_named_node(edge):  # noqa: F811
    admin, alice, manager = edge
    report("ap-1", PI)  # 3.5 cpus free: 3 instances of 0.5 (its slots)
    report("ap-2", SMALL)  # 1.0 cpus free: 2 instances
    report("ap-3", SMALL)
    # Two instances of 0.5 cpus fit on ap-1: the create keeps them there.
    status, body = create(alice, name="two", node="ap-1", count="2")
    assert status == 202, body
    assert body["operation"]["params"] == {"count": 2, "node": "ap-1", "pin": True}
    # Without --node: placed where placement puts them, not pinned.
    status, body = create(alice, name="free", count="2")
    assert status == 202 and "pin" not in body["operation"]["params"], body
    # More than ap-1's 3 slots: near ap-1, as placement spreads them.
    status, body = create(alice, name="wide", node="ap-1", count="4")
    assert status == 202, body
    assert body["operation"]["params"] == {"count": 4, "node": "ap-1"}, body
    # More than the nodes' sizes hold together (7), though not more than
    # their 9 slots: refused before anything is stored (it was admitted
    # when one instance fitted, and the create failed later).
    status, body = create(alice, name="huge", node="ap-1", count="8")
    assert status == 409 and "lower the count" in body["error"]["message"], body
    with db.session_scope() as s:
        assert s.scalar(select(models.Service).where(models.Service.name == "huge")) \
            is None


def test_evictions_made_for_every_instance_pin_the_create(edge):  # noqa: F811
    """ap-1 holds a priority-10 service of two 1.5-cpu instances (0.5 of
    its 3.5 cpus free); a priority-90 create of two 1.0-cpu instances on
    ap-1 fits nowhere as it is (ap-2 has one free slot, ap-3 is disabled):
    one low instance is evicted to ap-2, and both new instances go to ap-1,
    which the evictions made room on."""
    admin, alice, manager = edge
    set_slots("ap-1", 4)
    add_service("low", "alice", "ap-1", ["ap-1", "ap-1"])
    low = set_qos("low", priority=10)
    with db.session_scope() as s:
        for iid in low:
            s.get(models.Instance, iid).cpus = 1.5
    add_service("other", "alice", "ap-2", ["ap-2", "ap-2"], port=20001)
    for n in ("ap-1", "ap-2", "ap-3"):
        report(n, PI)
    assert admin("POST", "/v1/nodes/ap-3/drain", json={"reason": "test"})[0] == 200
    manager.conf.set_override("instance_cpus", 1.0, group="manager")
    try:
        status, body = create(alice, name="high", node="ap-1", count="2", priority="90")
    finally:
        manager.conf.clear_override("instance_cpus", group="manager")
    assert status == 202, body
    params = body["operation"]["params"]
    assert params["pin"] is True and params["node"] == "ap-1", params
    [after] = params["after"]
    with db.session_scope() as s:
        assert s.get(models.Operation, after).params["moves"] == [
            {"instance": low[1], "to": "ap-2"}]
