"""The manager's capacity view (manager/placement_view.py) agrees with the
store: after reports, creates, resizes, deletes, nodes going down and up
(written by the liveness receiver and the node monitor, i.e. not through
this process's sessions), another process's change, and a manager
restart.  "Agrees" is checked two ways: against a view built afresh from
the store, and by what placement reads of it (Cluster.capacity)."""
import datetime

from sqlalchemy import update

from mec_conpaas import drivers
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.manager import cluster as cluster_mod
from mec_conpaas.manager import liveness
from mec_conpaas.manager import placement_view
from mec_conpaas.manager import qos

CAP = {"cpus": 4.0, "memory_mb": 1024, "reserve_cpus": 0.5, "reserve_memory_mb": 128}


def _node(s, name, report=None):
    s.add(models.Node(id="id-" + name, name=name, hostname=name, mac="02:00:00:00:00:01",
                      address="10.0.0.1", agent_port=9681, agent_token="x",
                      max_instances=4, report=report or {},
                      last_heartbeat=models.utcnow(), state="up"))


def _fresh(session):
    view = placement_view.View()
    view.rebuild(session)
    return view


def _agrees(view, session):
    """The long-lived view holds exactly what the store holds."""
    fresh = _fresh(session)
    assert view.nodes == fresh.nodes
    assert view.instances == fresh.instances
    assert view.services == fresh.services
    assert {k: set(v) for k, v in view.by_node.items()} == \
        {k: set(v) for k, v in fresh.by_node.items()}


def test_the_view_follows_the_store(store):
    cluster = cluster_mod.Cluster(store, drivers.load(store.manager.driver, store))
    with db.session_scope() as s:
        s.add(models.Tenant(id="t", name="t"))
        for n in ("ap-1", "ap-2", "ap-3"):
            _node(s, n)
    with db.session_scope() as s:
        cap = cluster.capacity(s)  # the first use builds it from the store
        view = placement_view.for_session(s)
    assert view.rebuilds == 1
    assert cap["ap-1"] == {"max_instances": 4, "used": 0, "up": True,
                           "schedulable": True}

    # A report with capacity (what an HTTP heartbeat writes).
    with db.session_scope() as s:
        s.get(models.Node, "id-ap-1").report = {"capacity": CAP, "containers": {}}
    with db.session_scope() as s:
        cap = cluster.capacity(s)
        _agrees(view, s)
    assert (cap["ap-1"]["free_cpus"], cap["ap-1"]["free_memory_mb"]) == (3.5, 896)

    # A service and two instances created, one resized.
    with db.session_scope() as s:
        s.add(models.Service(id="svc", tenant_id="t", name="web", type="generic",
                             port=20001, bundle_sha256="0" * 64, memory_mb=256,
                             cpus=1.0, priority=70))
        for i in ("i-1", "i-2"):
            s.add(models.Instance(id=i, service_id="svc", node_name="ap-1",
                                  state="ACTIVE"))
    with db.session_scope() as s:
        s.get(models.Instance, "i-2").cpus = 0.5
    with db.session_scope() as s:
        cap = cluster.capacity(s)
        nodes = qos.view(s, cluster)
        _agrees(view, s)
    assert cap["ap-1"]["used"] == 2
    assert (cap["ap-1"]["free_cpus"], cap["ap-1"]["free_memory_mb"]) == (2.0, 384)
    assert nodes["ap-1"]["containers"]["i-1"]["priority"] == 70
    assert view.rebuilds == 1  # all of that without reading the store again

    # Uncommitted changes of the deciding session are seen, as a query
    # would see them; a rollback leaves the view as it was.
    with db.session_scope() as s:
        s.add(models.Instance(id="i-3", service_id="svc", node_name="ap-2",
                              state="BUILDING"))
        assert cluster.capacity(s)["ap-2"]["used"] == 1
        s.rollback()
        assert cluster.capacity(s)["ap-2"]["used"] == 0

    # Deletes: an instance, then the service (its last instance's row stays
    # and keeps its slot until swept).
    with db.session_scope() as s:
        s.delete(s.get(models.Instance, "i-1"))
    with db.session_scope() as s:
        s.get(models.Instance, "i-2").service_id = None
        s.delete(s.get(models.Service, "svc"))
    with db.session_scope() as s:
        cap = cluster.capacity(s)
        _agrees(view, s)
    assert cap["ap-1"]["used"] == 1 and "svc" not in view.services

    # ap-3 goes silent: the monitor (a bulk UPDATE) marks it down.
    with db.session_scope() as s:
        s.get(models.Node, "id-ap-3").last_heartbeat = models.utcnow() - \
            datetime.timedelta(seconds=store.manager.node_heartbeat_timeout + 5)
    cluster.started = models.utcnow() - datetime.timedelta(hours=1)
    cluster.mark_down_nodes()
    with db.session_scope() as s:
        assert not cluster.capacity(s)["ap-3"]["up"]
        _agrees(view, s)
    # ... and comes back through a datagram: the receiver process writes it.
    live = liveness.Liveness(store)
    live.pending["id-ap-3"] = datetime.datetime.now(datetime.timezone.utc).timestamp()
    assert live.flush() == 1
    view.beats_at = view.clock() - placement_view.BEATS_S  # its re-read is due
    with db.session_scope() as s:
        assert cluster.capacity(s)["ap-3"]["up"]
        _agrees(view, s)
    assert view.rebuilds == 1  # beats re-read, nothing decoded

    # Another process changes a report behind the view's back: seen within
    # MAX_AGE (a rebuild).
    with db.get_engine().begin() as conn:
        conn.execute(update(models.Node.__table__).where(
            models.Node.__table__.c.id == "id-ap-2").values(
            report={"capacity": CAP, "containers": {}}))
    view.built_at -= placement_view.MAX_AGE
    with db.session_scope() as s:
        assert cluster.capacity(s)["ap-2"]["free_cpus"] == 3.5
        _agrees(view, s)
    assert view.rebuilds == 2
    before = {k: dict(v) for k, v in cluster_capacity(cluster).items()}

    # A manager restart: a new engine, a new view built from the store.
    db.reset()
    cluster = cluster_mod.Cluster(store, drivers.load(store.manager.driver, store))
    cluster.started = models.utcnow() - datetime.timedelta(hours=1)
    with db.session_scope() as s:
        assert placement_view.for_session(s) is not view
        assert cluster.capacity(s) == before


def cluster_capacity(cluster):
    with db.session_scope() as s:
        return cluster.capacity(s)
