"""The node drain/enable API and disabled nodes as targets, on a real store
with a recording engine (no containers: the workflows do not run)."""
import datetime

import pytest
from sqlalchemy import select

from mec_conpaas.api import app as app_mod
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.drivers import lxc
from mec_conpaas.manager import auth
from mec_conpaas.manager import cluster as cluster_mod
from mec_conpaas.manager import engine
from mec_conpaas.manager import liveness
from mec_conpaas.manager import mobility
from mec_conpaas.manager import service
from mec_conpaas.manager import services

TOPO = """
nodes: {ap-1: {}, ap-2: {}, ap-3: {}}
links:
  - {a: ap-1, b: ap-2, latency_ms: 2}
  - {a: ap-2, b: ap-3, latency_ms: 2}
"""


class Engine:
    def __init__(self):
        self.submitted = []

    def submit(self, op_id):
        self.submitted.append(op_id)


class Manager:
    """The API's manager with the real service layer and the reference
    driver (no node is called: the workflows do not run)."""

    def __init__(self, conf, driver=None):
        self.conf = conf
        self.cluster = cluster_mod.Cluster(conf, driver or lxc.LxcDriver(conf))
        self.services = services.Services(self.cluster)
        self.engine = Engine()
        self.mobility = mobility.Mobility(self.cluster, self.services, self.engine)
        self.sample_bundle = service.build_sample_bundle
        self.liveness = liveness.Liveness(conf)  # no socket: not advertised
        self.sweeps = 0

    def sweep_soon(self):
        self.sweeps += 1


class Api:
    """A test client per token, answering (status, body)."""

    def __init__(self, flask_app, token):
        self.client = flask_app.test_client()
        self.token = token

    def __call__(self, method, path, **kwargs):
        resp = self.client.open(path, method=method, headers={
            "Authorization": "Bearer " + self.token}, **kwargs)
        return resp.status_code, resp.get_json()


@pytest.fixture
def edge(store, tmp_path):
    topo = tmp_path / "topology.yaml"
    topo.write_text(TOPO)
    store.set_override("state_path", str(tmp_path), group=None)
    store.set_override("topology_file", str(topo), group="manager")
    manager = Manager(store)
    flask_app = app_mod.create_app(manager)
    with db.session_scope() as s:
        admin_t = auth.ensure_tenant(s, "admin")
        alice_t = auth.ensure_tenant(s, "alice")
        admin = auth.issue(s, "admin", "admin", admin_t.id)
        alice = auth.issue(s, "member", "alice", alice_t.id)
        for n in ("ap-1", "ap-2", "ap-3"):
            s.add(models.Node(id=n, name=n, hostname=n, mac="02:00:00:00:00:01",
                              address="10.0.0.1", agent_port=9681, agent_token="x",
                              max_instances=3, report={}))
    yield Api(flask_app, admin), Api(flask_app, alice), manager
    store.clear_override("state_path")
    store.clear_override("topology_file", group="manager")


def add_service(name, tenant, home, nodes, state="RUNNING", port=20000):
    with db.session_scope() as s:
        t = s.scalar(select(models.Tenant).where(models.Tenant.name == tenant))
        svc = models.Service(tenant_id=t.id, name=name, type="web", state=state,
                             home_node=home, port=port, bundle_sha256="0" * 64,
                             memory_mb=64, cpus=0.5)
        s.add(svc)
        s.flush()
        base = models.utcnow()
        for k, node in enumerate(nodes):
            s.add(models.Instance(service_id=svc.id, node_name=node, state="ACTIVE",
                                  address="10.250.0.%d" % (port % 100 + k),
                                  created_at=base + datetime.timedelta(seconds=k)))
        return svc.id


def snapshot():
    with db.session_scope() as s:
        return (sorted((n.name, n.disabled, n.disabled_reason)
                       for n in s.scalars(select(models.Node))),
                sorted((v.name, v.state, v.home_node)
                       for v in s.scalars(select(models.Service))),
                s.scalars(select(models.Operation.id)).all())


def test_tenants_do_not_see_the_admin_calls(edge):
    admin, alice, _ = edge
    for path in ("/v1/nodes/ap-1/drain", "/v1/nodes/ap-1/enable"):
        assert alice("POST", path) == (404, {"error": {
            "code": "not_found", "message": "no such API path"}})
    assert admin("POST", "/v1/nodes/ap-9/drain")[0] == 404
    status, body = admin("POST", "/v1/nodes/ap-1/drain", json={"reason": 7})
    assert status == 400 and "reason must be a text" in body["error"]["message"]
    status, body = admin("POST", "/v1/nodes/ap-1/drain", data="[",
                         content_type="application/json")
    assert status == 400 and "JSON object" in body["error"]["message"]


def test_drain_moves_every_tenants_instances_and_is_idempotent(edge):
    admin, alice, manager = edge
    web = add_service("web", "alice", "ap-1", ["ap-1", "ap-1"])
    api = add_service("api", "alice", "ap-2", ["ap-2", "ap-1"], port=20010)
    mine = add_service("own", "admin", "ap-3", ["ap-3"], port=20020)
    status, body = admin("POST", "/v1/nodes/ap-1/drain", json={"reason": "new SD card"})
    assert status == 202, body
    assert body["node"]["schedulable"] is False
    assert body["node"]["disabled_reason"] == "new SD card"
    ops = {o["service"]: o for o in body["operations"]}
    assert sorted(ops) == ["api", "web"] and manager.engine.submitted == [
        o["id"] for o in body["operations"]]
    assert {o["kind"] for o in ops.values()} == {"drain"}
    assert {o["tenant"] for o in ops.values()} == {"alice"}
    # Nearest to ap-1 first (ap-2 has 2 free slots), then ap-3.
    assert [m["to"] for m in ops["api"]["params"]["moves"]] == ["ap-2"]
    assert ops["api"]["params"]["home"] is None
    assert [m["to"] for m in ops["web"]["params"]["moves"]] == ["ap-2", "ap-3"]
    assert ops["web"]["params"]["home"] == "ap-2"
    with db.session_scope() as s:
        assert {s.get(models.Service, i).state for i in (web, api)} == {"ADAPTING"}
        assert s.get(models.Service, mine).state == "RUNNING"
    # The operations are the tenant's: alice sees them, the admin may follow them.
    for client in (alice, admin):
        assert client("GET", "/v1/operations/" + ops["web"]["id"])[0] == 200
    assert [o["id"] for o in alice("GET", "/v1/operations")[1]["operations"]] \
        .count(ops["web"]["id"]) == 1
    # The moves done: draining again changes nothing.
    with db.session_scope() as s:
        for inst in s.scalars(select(models.Instance).where(
                models.Instance.node_name == "ap-1")):
            s.delete(inst)
        for sid in (web, api):
            s.get(models.Service, sid).state = "RUNNING"
    before = snapshot()
    status, body = admin("POST", "/v1/nodes/ap-1/drain")
    assert (status, body["operations"]) == (200, [])
    assert body["node"]["disabled_reason"] == "new SD card"
    assert snapshot() == before
    status, body = admin("POST", "/v1/nodes/ap-1/enable")
    assert status == 200 and body["node"]["schedulable"] is True
    assert body["node"]["disabled_reason"] is None


def test_drain_names_the_leftovers_and_has_the_sweep_remove_them_now(edge):
    """A delete that found the node silent leaves its instance DELETING and
    detached: nothing to move, but the node is not empty (nova still lists its
    server).  The drain names it and starts the sweep instead of leaving it
    to the next [manager] orphan_sweep_interval."""
    admin, _, manager = edge
    gone = add_service("gone", "alice", "ap-2", ["ap-2"])
    add_service("busy", "alice", "ap-3", ["ap-3"], state="ADAPTING", port=20010)
    with db.session_scope() as s:
        left = s.scalar(select(models.Instance).where(models.Instance.service_id == gone))
        left.state, left.service_id = "DELETING", None
        s.delete(s.get(models.Service, gone))
        # Not a leftover: its service's operation accounts for it.
        busy = s.scalar(select(models.Instance).where(models.Instance.node_name == "ap-3"))
        busy.state = "STANDBY"
        busy.service.operation_id = "op-1"
        left_id = left.id
    status, body = admin("POST", "/v1/nodes/ap-2/drain")
    assert (status, body["operations"], body["leftovers"]) == (200, [], [left_id])
    assert manager.sweeps == 1
    with db.session_scope() as s:
        assert engine.leftovers(s) == [left_id]
    # A drain with operations to follow leaves the sweep to its next turn.
    add_service("web", "alice", "ap-1", ["ap-1"], port=20020)
    status, body = admin("POST", "/v1/nodes/ap-1/drain")
    assert (status, body["leftovers"], manager.sweeps) == (202, [], 1)


def test_tenants_cannot_follow_other_tenants_operations(edge):
    admin, alice, _ = edge
    add_service("own", "admin", "ap-3", ["ap-3"])
    op = admin("POST", "/v1/nodes/ap-3/drain")[1]["operations"][0]
    assert alice("GET", "/v1/operations/" + op["id"])[0] == 404


def test_drain_refused_and_nothing_changed_when_busy_or_full(edge):
    admin, _, manager = edge
    add_service("web", "alice", "ap-1", ["ap-1", "ap-1"])
    add_service("busy", "alice", "ap-2", ["ap-2"], state="ADAPTING", port=20010)
    add_service("full", "admin", "ap-3", ["ap-3", "ap-3", "ap-3"], port=20020)
    before = snapshot()
    status, body = admin("POST", "/v1/nodes/ap-2/drain")
    assert status == 409 and body["error"]["code"] == "conflict"
    assert "busy (tenant alice) is ADAPTING" in body["error"]["message"]
    assert "retry the drain when their operations end" in body["error"]["message"]
    assert snapshot() == before
    # ap-1's two instances need two slots: ap-2 has 2 free but ap-3 none;
    # with ap-2 disabled there is no room.
    with db.session_scope() as s:
        s.get(models.Node, "ap-2").disabled = True
    before = snapshot()
    status, body = admin("POST", "/v1/nodes/ap-1/drain", json={"reason": "x"})
    assert status == 409 and body["error"]["code"] == "insufficient_capacity"
    assert ("needs 2 free instance slot(s) on the other up, schedulable nodes but they "
            "have 0 (ap-2: disabled; ap-3: 0 of 3 free)") in body["error"]["message"]
    assert snapshot() == before and manager.engine.submitted == []


def test_drain_of_a_down_node(edge):
    admin, _, _ = edge
    with db.session_scope() as s:
        node = s.get(models.Node, "ap-3")
        # Silent for an hour: the monitor has marked it down.
        node.last_heartbeat = models.utcnow() - datetime.timedelta(hours=1)
        node.state = "down"
    # Empty: it is only disabled.
    status, body = admin("POST", "/v1/nodes/ap-3/drain")
    assert status == 200 and body["node"]["schedulable"] is False
    admin("POST", "/v1/nodes/ap-3/enable")
    add_service("web", "alice", "ap-3", ["ap-3"])
    before = snapshot()
    status, body = admin("POST", "/v1/nodes/ap-3/drain")
    assert status == 409 and "ap-3 is down" in body["error"]["message"]
    assert snapshot() == before


def test_disabled_node_is_refused_as_a_target(edge):
    admin, alice, _ = edge
    add_service("web", "alice", "ap-2", ["ap-2"])
    assert admin("POST", "/v1/nodes/ap-1/drain", json={"reason": "flaky radio"})[0] == 200
    message = ("node ap-1 is disabled (flaky radio): choose another node or "
               "`mec-conpaas node enable ap-1`")
    for method, path, kwargs in (
            ("POST", "/v1/services", {"data": {"type": "web", "name": "x",
                                               "node": "ap-1"}}),
            ("POST", "/v1/services/web/scale", {"json": {"count": 2, "node": "ap-1"}}),
            ("POST", "/v1/services/web/migrate", {"json": {"to": "ap-1"}})):
        assert alice(method, path, **kwargs) == (409, {"error": {
            "code": "conflict", "message": message}})
    nodes = {n["name"]: n for n in alice("GET", "/v1/nodes")[1]["nodes"]}
    assert nodes["ap-1"]["schedulable"] is False and nodes["ap-2"]["schedulable"]
    assert nodes["ap-1"]["disabled_reason"] == "flaky radio"
    # Free slots no longer count the disabled node.
    status, body = alice("POST", "/v1/services/web/scale", json={"count": 7})
    assert status == 409 and "have 5 free slot(s) (ap-1: disabled; ap-2: 2 of 3 free; " \
        "ap-3: 3 of 3 free)" in body["error"]["message"]
    # Without a named node, the new service's home is an enabled one: ap-3,
    # whose slots are all free (ap-2 runs web's instance).
    status, body = alice("POST", "/v1/services", data={"type": "web", "name": "new"})
    assert status == 202 and body["service"]["home_node"] == "ap-3"
    assert admin("POST", "/v1/nodes/ap-1/enable")[0] == 200
    assert alice("POST", "/v1/services/web/scale", json={"count": 2, "node": "ap-1"}
                 )[0] == 202


def test_the_managers_downtime_is_not_a_nodes_silence():
    """A node up when the manager stopped gets a full timeout after the
    manager starts again; one already down stays down."""
    import types
    conf = types.SimpleNamespace(manager=types.SimpleNamespace(node_heartbeat_timeout=6))
    cluster = cluster_mod.Cluster.__new__(cluster_mod.Cluster)
    cluster.conf = conf
    now = models.utcnow()
    cluster.started = now
    long_ago = now - datetime.timedelta(seconds=60)
    was_up = types.SimpleNamespace(state="up", last_heartbeat=long_ago)
    was_down = types.SimpleNamespace(state="down", last_heartbeat=long_ago)
    assert cluster.is_up(was_up) and not cluster.is_up(was_down)
    # A timeout after the start with no heartbeat: down.
    cluster.started = now - datetime.timedelta(seconds=7)
    assert not cluster.is_up(was_up)
