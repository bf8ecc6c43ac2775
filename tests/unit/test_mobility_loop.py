"""The manager's mobility loop on a real store and the real API: users
from node reports, policy decisions stored as operations with their
reason, /v1/users for admins only (the engine records, no node is called)."""
import datetime

from sqlalchemy import select

from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.manager import mobility as mobility_mod
from tests.unit.test_api_nodes import add_service
from tests.unit.test_api_nodes import edge  # noqa: F401  (fixture)


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def report(node, stations=(), users=None, sid=None):
    with db.session_scope() as s:
        n = s.get(models.Node, node)
        n.last_heartbeat = models.utcnow()
        n.report = {"stations": [{"mac": "02:aa:00:00:00:%02d" % k, "user": u,
                                  "address": a, "signal": None, "since": 0}
                                 for k, (u, a) in enumerate(stations)],
                    "services": {sid: {"name": "web", "request_rate": 10.0,
                                       "requests": 100, "response_ms": 1.0,
                                       "users": users or {}}} if sid else {}}


def setup(edge, **opts):  # noqa: F811
    admin, alice, manager = edge
    for k, v in opts.items():
        manager.conf.set_override(k, v, group="policies")
    clock = Clock()
    manager.mobility = mobility_mod.Mobility(manager.cluster, manager.services,
                                             manager.engine, clock=clock)
    return admin, alice, manager, clock


def clear(manager, *names):
    for k in names:
        manager.conf.clear_override(k, group="policies")


def test_users_are_listed_for_admins_and_hidden_from_tenants(edge):  # noqa: F811
    admin, alice, manager, clock = setup(edge)
    sid = add_service("web", "alice", "ap-1", ["ap-1"])
    for n in ("ap-1", "ap-2", "ap-3"):
        report(n)
    report("ap-2", [("bob", "10.0.2.10")], {"10.0.2.10": 1.0}, sid)
    status, body = admin("GET", "/v1/users")
    assert status == 200
    assert [(u["name"], u["ap"], u["address"], u["services"]) for u in body["users"]] \
        == [("bob", "ap-2", "10.0.2.10", ["web"])]
    assert alice("GET", "/v1/users")[0] == 403
    _, node = alice("GET", "/v1/nodes/ap-2")
    assert "stations" not in node["node"]["report"]
    assert "stations" in admin("GET", "/v1/nodes/ap-2")[1]["node"]["report"]


def test_a_settled_user_elsewhere_starts_a_migration_with_its_reason(edge):  # noqa: F811
    admin, alice, manager, clock = setup(edge, follow_the_user=True, min_dwell=5.0)
    try:
        sid = add_service("web", "alice", "ap-1", ["ap-1"])
        for n in ("ap-1", "ap-2", "ap-3"):
            report(n)
        report("ap-1", [("bob", "10.0.1.10")], {"10.0.1.10": 0.5}, sid)
        assert manager.mobility.round() == []          # bob is at home
        report("ap-1")
        report("ap-3", [("bob", "10.0.3.10")], {"10.0.3.10": 0.5}, sid)
        assert manager.mobility.round() == []          # just arrived: dwell
        clock.now += 6
        started = manager.mobility.round()
        assert len(started) == 1 and manager.engine.submitted == started
        with db.session_scope() as s:
            op = s.get(models.Operation, started[0])
            assert (op.kind, op.params["to"], op.params["source"]) == (
                "migrate", "ap-3", "ap-1")
            assert op.params["reason"].startswith("follow-the-user: 1 user(s) at ap-3")
        _, ops = alice("GET", "/v1/operations")
        assert ops["operations"][0]["params"]["reason"] == op.params["reason"]
        # The service is held by it: nothing more is decided meanwhile.
        assert manager.mobility.round() == []
        assert manager.mobility.history == {"first": {"ap-1": {"ap-3": 1}}}
    finally:
        clear(manager, "follow_the_user", "min_dwell")


def bob_at_ap1(manager):
    """A web service on ap-1 and bob there using it; the loop's round
    (ahead-of-handover's standby on ap-2).  Returns (service id, started)."""
    sid = add_service("web", "alice", "ap-1", ["ap-1"])
    for n in ("ap-2", "ap-3"):
        report(n)
    report("ap-1", [("bob", "10.0.1.10")], {"10.0.1.10": 0.5}, sid)
    return sid, manager.mobility.round()


def test_standby_is_a_scale_on_the_predicted_ap_and_is_dropped(edge):  # noqa: F811
    admin, alice, manager, clock = setup(edge, ahead_of_handover=True)
    try:
        sid, started = bob_at_ap1(manager)
        with db.session_scope() as s:
            op = s.get(models.Operation, started[0])
            assert (op.kind, op.params["count"], op.params["node"],
                    op.params["standby"]) == ("scale", 2, "ap-2", True)
            assert "user bob at ap-1 is likely (p=1.00) to move to ap-2" \
                in op.params["reason"]
            # The scale ran: a standby on ap-2, the service free again.
            svc = s.get(models.Service, sid)
            svc.operation_id, svc.state = None, "RUNNING"
            s.add(models.Instance(service_id=sid, node_name="ap-2", state="ACTIVE",
                                  address="10.250.0.99"))
        assert manager.mobility.round() == []           # the prediction holds
        report("ap-1")                                   # bob leaves
        started = manager.mobility.round()
        with db.session_scope() as s:
            op = s.get(models.Operation, started[0])
            assert (op.kind, op.params["count"], op.params["remove_from"]) == (
                "scale", 1, ["ap-2"])
            assert "no user is predicted to move to ap-2" in op.params["reason"]
    finally:
        clear(manager, "ahead_of_handover")


def restarted(manager, clock):
    """A new loop, as a restarted manager makes: it has only the store."""
    manager.mobility = mobility_mod.Mobility(manager.cluster, manager.services,
                                             manager.engine, clock=clock)
    return manager.mobility


def test_a_restarted_loop_keeps_dwell_history_and_last_move(edge):  # noqa: F811
    admin, alice, manager, clock = setup(edge, follow_the_user=True, min_dwell=5.0)
    try:
        sid = add_service("web", "alice", "ap-1", ["ap-1"])
        for n in ("ap-1", "ap-2", "ap-3"):
            report(n)
        report("ap-1", [("bob", "10.0.1.10")], {"10.0.1.10": 0.5}, sid)
        assert manager.mobility.round() == []
        report("ap-1")
        report("ap-2", [("bob", "10.0.2.10")], {"10.0.2.10": 0.5}, sid)
        assert manager.mobility.round() == []          # just arrived: dwell
        clock.now += 3
        # Restarted 3 s into bob's 5 s dwell: the dwell runs on, not afresh.
        loop = restarted(manager, clock)
        assert loop.round() == []
        assert loop.users["bob"]["since"] == 1000.0 and \
            loop.users["bob"]["previous"] == "ap-1"
        assert loop.history == {"first": {"ap-1": {"ap-2": 1}}}
        clock.now += 2.5
        started = loop.round()
        assert len(started) == 1
        with db.session_scope() as s:
            op = s.get(models.Operation, started[0])
            assert op.params["to"] == "ap-2"
            # The migration ran: home and instance on ap-2.
            svc = s.get(models.Service, sid)
            svc.operation_id, svc.state, svc.home_node = None, "RUNNING", "ap-2"
            svc.instances[0].node_name = "ap-2"
        # bob goes back at once, settles, and the manager restarts: the
        # service's own dwell (since the move) still holds it.
        report("ap-2")
        report("ap-1", [("bob", "10.0.1.10")], {"10.0.1.10": 0.5}, sid)
        assert restarted(manager, clock).round() == []
        clock.now += 4.9
        loop = restarted(manager, clock)
        assert loop.round() == []                      # 4.9 s < 5 s since the move
        assert loop.last_move == {sid: 1005.5}
        assert loop.history["second"] == {"ap-1>ap-2": {"ap-1": 1}}
        # bob detaches: his row goes with him.
        report("ap-1")
        loop.round()
        assert restarted(manager, clock).round() == [] and manager.mobility.users == {}
    finally:
        clear(manager, "follow_the_user", "min_dwell")


def test_a_standby_started_before_a_crash_is_still_dropped(edge):  # noqa: F811
    admin, alice, manager, clock = setup(edge, ahead_of_handover=True)
    try:
        sid, started = bob_at_ap1(manager)
        assert len(started) == 1
        with db.session_scope() as s:
            assert [(r.service_id, r.node) for r in s.scalars(
                select(models.MobilityStandby))] == [(sid, "ap-2")]
            svc = s.get(models.Service, sid)
            svc.operation_id, svc.state = None, "RUNNING"
            s.add(models.Instance(service_id=sid, node_name="ap-2", state="ACTIVE",
                                  address="10.250.0.99"))
        # Killed and restarted: the ap-2 instance is still known as the
        # standby (no second one), and goes when bob does.
        loop = restarted(manager, clock)
        assert loop.round() == []
        assert loop.standbys == {sid: {"ap-2": 1000.0}}
        # Before the nodes heartbeat again (down in the store): bob, not
        # seen, is not taken for gone, and the standby stays.
        with db.session_scope() as s:
            for n in ("ap-1", "ap-2", "ap-3"):
                s.get(models.Node, n).last_heartbeat = models.utcnow() - \
                    datetime.timedelta(seconds=60)
        loop = restarted(manager, clock)
        assert loop.round() == [] and "bob" in loop.users
        report("ap-1", [("bob", "10.0.1.10")], {"10.0.1.10": 0.5}, sid)
        for n in ("ap-2", "ap-3"):
            report(n)
        assert loop.round() == [] and loop.standbys == {sid: {"ap-2": 1000.0}}
        report("ap-1")
        started = restarted(manager, clock).round()
        with db.session_scope() as s:
            op = s.get(models.Operation, started[0])
            assert op.params["remove_from"] == ["ap-2"]
            assert s.scalars(select(models.MobilityStandby)).all() == []
        # The service deleted: nothing of it is kept.
        with db.session_scope() as s:
            s.get(models.Service, sid).operation_id = None
            s.get(models.Service, sid).state = "RUNNING"
            s.add(models.MobilityMove(service_id=sid, at=1.0))
        with db.session_scope() as s:
            for i in s.get(models.Service, sid).instances:
                s.delete(i)
            s.delete(s.get(models.Service, sid))
        restarted(manager, clock).round()
        with db.session_scope() as s:
            assert s.scalars(select(models.MobilityMove)).all() == []
    finally:
        clear(manager, "ahead_of_handover")
