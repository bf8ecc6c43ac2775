"""Reading the whole fleet (every placement does, at 1,000 nodes): a node's
report is decoded once per distinct text, and reading the nodes' state
writes nothing back unless a state changed."""
from sqlalchemy import event
from sqlalchemy import select

from mec_conpaas import drivers
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.manager import cluster as cluster_mod


def _add(s, name, report):
    s.add(models.Node(id=name, name=name, hostname=name, mac="02:00:00:00:00:01",
                      address="10.0.0.1", agent_port=9681, agent_token="x",
                      max_instances=3, report=report, last_heartbeat=models.utcnow(),
                      state="up"))


def test_a_report_is_decoded_once_per_text(store):
    report = {"capacity": {"cpus": 4.0, "memory_mb": 1024}, "containers": {}}
    with db.session_scope() as s:
        _add(s, "ap-1", report)
        _add(s, "ap-2", dict(report))
    with db.session_scope() as s:
        a, b = s.scalars(select(models.Node).order_by(models.Node.name))
        assert a.report == report and a.report is b.report  # same text: one decode
    with db.session_scope() as s:
        again = s.get(models.Node, "ap-1").report
    assert again is a.report
    with db.session_scope() as s:  # a new report: a new value
        s.get(models.Node, "ap-2").report = {"capacity": {"cpus": 2.0, "memory_mb": 512}}
    with db.session_scope() as s:
        assert s.get(models.Node, "ap-2").report["capacity"]["cpus"] == 2.0
        assert s.get(models.Node, "ap-1").report == report


def test_reading_the_fleet_writes_back_only_changed_states(store):
    with db.session_scope() as s:
        for n in range(5):
            _add(s, "ap-%d" % n, {})
    cluster = cluster_mod.Cluster(store, drivers.load(store.manager.driver, store))
    updates = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE"):
            updates.append(statement)
    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        with db.session_scope() as s:
            assert len(cluster.nodes(s, up_only=True)) == 5
            # Not even marked: else every later query's autoflush walks
            # all of them (most of a placement's time at 1,000 nodes).
            assert not s.dirty
        assert updates == []
        with db.session_scope() as s:  # one node silent past the timeout
            node = s.get(models.Node, "ap-3")
            node.last_heartbeat = models.utcnow().replace(year=2000)
            node.state = "down"
        updates.clear()
        with db.session_scope() as s:
            assert len(cluster.nodes(s, up_only=True)) == 4
            assert not s.dirty  # already down: nothing to write
        assert updates == []
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_a_datagram_landing_while_the_monitor_decides_keeps_the_node_up(store):
    """The liveness receiver (another process) records a beat after the
    monitor read the node as silent: the monitor's write must not take it
    down."""
    import datetime
    with db.session_scope() as s:
        _add(s, "ap-1", {})
        _add(s, "ap-2", {})
        for n in ("ap-1", "ap-2"):
            s.get(models.Node, n).last_heartbeat = models.utcnow() - datetime.timedelta(
                seconds=store.manager.node_heartbeat_timeout + 5)

    class Racing(cluster_mod.Cluster):
        def is_up(self, node, deadline=None):
            up = super().is_up(node, deadline)
            if node.name == "ap-1":  # a flush commits meanwhile
                with db.session_scope() as other:
                    other.get(models.Node, "ap-1").last_heartbeat = models.utcnow()
            return up

    cluster = Racing(store, drivers.load(store.manager.driver, store))
    cluster.started = models.utcnow() - datetime.timedelta(hours=1)
    cluster.mark_down_nodes()
    with db.session_scope() as s:
        assert s.get(models.Node, "ap-1").state == "up"    # heard meanwhile
        assert s.get(models.Node, "ap-2").state == "down"  # really silent


def test_the_monitor_reads_only_the_nodes_whose_state_may_be_wrong(store):
    """The store picks the candidates (up but silent, down but heard, an
    odd state); the rest of the fleet is not even read, and each candidate
    ends with the state its last heartbeat says (a node up before this
    manager started counts as heard at the start)."""
    import datetime
    timeout = datetime.timedelta(seconds=store.manager.node_heartbeat_timeout)
    now = models.utcnow()
    rows = {"fresh-up": ("up", now), "stale-up": ("up", now - 2 * timeout),
            "heard-down": ("down", now), "stale-down": ("down", now - 2 * timeout),
            "odd": ("booting", now), "odd-stale": ("booting", now - 2 * timeout)}
    with db.session_scope() as s:
        for name, (state, seen) in rows.items():
            _add(s, name, {})
            s.get(models.Node, name).state, s.get(models.Node, name).last_heartbeat = \
                state, seen
        for n in range(20):  # the quiet majority
            _add(s, "ap-%02d" % n, {})
    read = []

    class Counting(cluster_mod.Cluster):
        def is_up(self, node, deadline=None):
            read.append(node.name)  # every row the monitor read
            return super().is_up(node, deadline)
    cluster = Counting(store, drivers.load(store.manager.driver, store))
    cluster.started = now - timeout / 2  # the stale-up node was up before that
    cluster.mark_down_nodes()  # a manager started half a timeout ago
    with db.session_scope() as s:
        assert s.get(models.Node, "stale-up").state == "up"
    assert sorted(read) == ["heard-down", "odd", "odd-stale", "stale-up"]
    cluster.started = now - 3 * timeout
    read.clear()
    cluster.mark_down_nodes()
    assert read == ["stale-up"]  # the others' states were right by now
    with db.session_scope() as s:
        got = {n.name: n.state for n in s.scalars(select(models.Node))}
    assert {k: got[k] for k in rows} == {
        "fresh-up": "up", "stale-up": "down", "heard-down": "up", "stale-down": "down",
        "odd": "up", "odd-stale": "down"}
    assert all(got["ap-%02d" % n] == "up" for n in range(20))
