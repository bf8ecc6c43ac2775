"""Lost nodes and snapshots: when a heal starts (a real store and the real
API's service rows; a recording engine), and the manager's snapshot store
(real statesync archives of real directories)."""
import datetime
import os

import pytest
from sqlalchemy import select

from mec_conpaas.agents.node import statesync
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.drivers import lxc
from mec_conpaas.manager import cluster as cluster_mod
from mec_conpaas.manager import engine as engine_mod
from mec_conpaas.manager import nodeloss
from mec_conpaas.manager import snapshots
from mec_conpaas.manager import workflows
from tests.unit.test_api_nodes import add_service
from tests.unit.test_api_nodes import edge  # noqa: F401  (fixture)
from tests.unit.test_operations import engine  # noqa: F401  (fixture)
from tests.unit.test_operations import held_op
from tests.unit.test_operations import nodes_down
from tests.unit.test_operations import wait_ended

T0 = datetime.datetime(2024, 1, 1, 12, 0, 0)


def s(n):
    return datetime.timedelta(seconds=n)


def test_lost_counts_from_the_last_heartbeat_never_before_the_manager_started():
    beats = {"ap-1": T0 - s(200), "ap-2": T0 - s(100), "ap-3": T0 - s(1)}
    started = T0 - s(3600)
    assert nodeloss.lost(beats, T0, started, 120, 15, {}) == {
        "ap-1": "no heartbeat for 200 s"}
    # A manager that was itself away: the nodes get the whole grace again.
    assert nodeloss.lost(beats, T0, T0 - s(60), 120, 15, {}) == {}
    assert nodeloss.lost(beats, T0 + s(60), T0 - s(60), 120, 15, {}) == {
        "ap-1": "no heartbeat for 120 s", "ap-2": "no heartbeat for 120 s"}
    # 0: never; below the heartbeat timeout: the heartbeat timeout.
    assert nodeloss.lost(beats, T0, started, 0, 15, {}) == {}
    assert sorted(nodeloss.lost(beats, T0, started, 5, 15, {})) == ["ap-1", "ap-2"]
    # Heartbeating but not answering the manager, for longer than the grace.
    unreachable = {"ap-3": (T0 - s(130), "connection refused"),
                   "ap-2": (T0 - s(10), "timed out")}
    assert nodeloss.lost(beats, T0, started, 120, 15, unreachable) == {
        "ap-1": "no heartbeat for 200 s",
        "ap-3": "node agent not answering for 130 s (connection refused)"}


def heartbeat(node, age):
    with db.session_scope() as ses:
        n = ses.get(models.Node, node)
        n.last_heartbeat = models.utcnow() - s(age)
        # As the monitor leaves it (it runs every timeout / 3 seconds).
        n.state = "up" if age < 5 else "down"
        # Nothing listens there: a probe is refused at once.
        n.address, n.agent_port = "127.0.0.1", 9


def test_a_lost_node_starts_one_heal_per_running_service_it_holds(edge):  # noqa: F811
    _, _, manager = edge
    conf = manager.conf
    conf.set_override("node_lost_grace", 30, group="manager")
    conf.set_override("node_heartbeat_timeout", 10, group="manager")
    try:
        for node, age in (("ap-1", 0), ("ap-2", 45), ("ap-3", 0)):
            heartbeat(node, age)
        web = add_service("web", "alice", "ap-2", ["ap-2", "ap-1"], port=20001)
        busy = add_service("busy", "alice", "ap-2", ["ap-2"], port=20002)
        elsewhere = add_service("elsewhere", "alice", "ap-1", ["ap-1"], port=20003)
        # Stopped: what a stop on a down node leaves (its instance DELETING,
        # for the sweep), and nothing to re-place.
        stopped = add_service("stopped", "alice", "ap-2", ["ap-2"], state="STOPPED",
                              port=20004)
        with db.session_scope() as ses:
            for inst in ses.get(models.Service, stopped).instances:
                inst.state = "DELETING"
            # Being stopped: its stop holds it, the heal waits.
            stop = engine_mod.new_operation(ses, "stop", ses.get(models.Service, busy),
                                            "EPILOGUE", ("RUNNING",), "stopped").id
        loss = nodeloss.NodeLoss(manager.cluster, manager.engine)
        # Just started: the manager gives every node a whole grace.
        assert loss.check() == []
        loss.started -= s(3600)
        ops = loss.check()
        assert len(ops) == 1 and manager.engine.submitted == ops
        with db.session_scope() as ses:
            op = ses.get(models.Operation, ops[0])
            assert (op.kind, op.service_id, op.state) == ("heal", web, "PENDING")
            assert op.params == {"nodes": {"ap-2": "no heartbeat for 45 s"}}
            svc = ses.get(models.Service, web)
            assert (svc.operation_id, svc.state) == (op.id, "ADAPTING")
            assert ses.get(models.Service, elsewhere).operation_id is None
            # A failed heal is tried again only after another grace.
            op.state = "FAILED"
            svc.operation_id, svc.state = None, "RUNNING"
        assert loss.check() == []
        # The stop ends: a STOPPED service is never healed.
        with db.session_scope() as ses:
            for inst in ses.get(models.Service, busy).instances:
                inst.state = "DELETING"
            ses.get(models.Operation, stop).state = "SUCCEEDED"
            engine_mod.release(ses, stop)
            ses.get(models.Service, busy).state = "STOPPED"
        assert loss.check() == []
        with db.session_scope() as ses:
            assert [o.kind for o in ses.scalars(select(models.Operation).where(
                models.Operation.service_id.in_([busy, stopped])))] == ["stop"]
        # ap-1 heartbeats but its agent does not answer: only probed so far.
        assert "ap-1" in loss.unreachable and "ap-3" not in loss.unreachable
    finally:
        conf.clear_override("node_lost_grace", group="manager")
        conf.clear_override("node_heartbeat_timeout", group="manager")


@pytest.fixture
def snaps(conf, tmp_path):
    conf.set_override("state_path", str(tmp_path / "manager"))
    yield snapshots.Snapshots(conf)
    conf.clear_override("state_path")


def pull(snaps, src, iid="i-1"):
    """One snapshot of ``src``; the paths it had to fetch (None: nothing)."""
    fetched = []

    def fetch(paths):
        fetched.append(paths)
        return statesync.export_tar(str(src), paths)
    changed = snaps.apply("svc", iid, statesync.manifest(str(src)), fetch)
    return fetched[0] if changed else None


def restored(snaps, dest, iid="i-1"):
    data, meta = snaps.archive("svc", iid)
    dest.mkdir()
    (dest / "left-by-the-app").write_text("x")
    statesync.import_tar(str(dest), data)
    return meta


def test_snapshots_copy_what_changed_and_restore_whole(snaps, tmp_path):
    src = tmp_path / "state"
    (src / "d").mkdir(parents=True)
    (src / "hits").write_text("41")
    (src / "d" / "big").write_bytes(b"x" * 5000)
    os.symlink("hits", src / "link")
    assert pull(snaps, src) == ["d/big", "hits", "link"]
    assert pull(snaps, src) is None  # unchanged: one manifest, no copy
    (src / "hits").write_text("42")
    (src / "d" / "big").unlink()
    (src / "new").write_text("n")
    assert pull(snaps, src) == ["hits", "new"]
    meta = restored(snaps, tmp_path / "replacement")
    assert statesync.manifest(str(tmp_path / "replacement")) == \
        statesync.manifest(str(src))
    assert (tmp_path / "replacement" / "hits").read_text() == "42"
    assert meta["bytes"] == 3 and meta["files"] == 2
    # One generation on disk; the replacement takes the snapshot over.
    top = os.path.join(snaps.root, "svc", "i-1")
    assert sorted(os.listdir(top)) == ["current", os.readlink(top + "/current")]
    snaps.move("svc", "i-1", "i-2")
    assert snaps.current("svc", "i-1") == (None, None)
    assert pull(snaps, src, "i-2") is None


def test_a_copy_cut_short_leaves_the_last_snapshot(snaps, tmp_path):
    src = tmp_path / "state"
    src.mkdir()
    (src / "hits").write_text("1")
    pull(snaps, src)
    (src / "hits").write_text("2")

    def broken(paths):
        raise OSError("connection reset")
    with pytest.raises(OSError):
        snaps.apply("svc", "i-1", statesync.manifest(str(src)), broken)
    restored(snaps, tmp_path / "replacement")
    assert (tmp_path / "replacement" / "hits").read_text() == "1"
    assert len(os.listdir(os.path.join(snaps.root, "svc", "i-1"))) == 2
    # The previous generation is hard-linked, never written through.
    (src / "hits").write_text("3")
    old_state, _ = snaps.current("svc", "i-1")
    pull(snaps, src)
    assert (tmp_path / "replacement" / "hits").read_text() == "1"
    new_state, _ = snaps.current("svc", "i-1")
    assert new_state != old_state and not os.path.exists(old_state)


def test_prune_forgets_deleted_services_and_instances(store, tmp_path):
    store.set_override("state_path", str(tmp_path))
    try:
        snaps = snapshots.Snapshots(store)
        with db.session_scope() as ses:
            ses.add(models.Tenant(id="t", name="t"))
            ses.flush()
            ses.add(models.Service(id="svc", tenant_id="t", name="a", type="web",
                                   port=20000, bundle_sha256="0", memory_mb=1,
                                   cpus=1.0, state="RUNNING"))
            ses.add(models.Instance(id="i-1", service_id="svc", node_name="ap-1"))
        src = tmp_path / "state"
        src.mkdir()
        (src / "f").write_text("f")
        for sid, iid in (("svc", "i-1"), ("svc", "i-gone"), ("deleted", "i-3")):
            snaps.apply(sid, iid, statesync.manifest(str(src)),
                        lambda paths: statesync.export_tar(str(src), paths))
        assert sorted(snaps.prune()) == ["deleted", "i-gone"]
        assert os.listdir(snaps.root) == ["svc"]
        assert os.listdir(os.path.join(snaps.root, "svc")) == ["i-1"]
    finally:
        store.clear_override("state_path")


def heal_op(sid, journal=None, state="PENDING", attempts=0):
    op_id = held_op(sid, "heal", state, attempts, journal)
    with db.session_scope() as ses:
        ses.get(models.Operation, op_id).params = {"nodes": {"ap-2": "no heartbeat"}}
        for inst in ses.get(models.Service, sid).instances:
            inst.address = "127.0.0.1"  # notify_peers: refused at once
    return op_id


def test_a_heal_resumed_after_its_switch_finishes_it(edge, engine, tmp_path):  # noqa: F811
    _, _, manager = edge
    nodes_down("ap-1", "ap-2", "ap-3")
    sid = add_service("web", "alice", "ap-1", ["ap-1", "ap-2"])
    with db.session_scope() as ses:
        new, old = ses.get(models.Service, sid).instances
        new_id, old_id = new.id, old.id
        old.state, old.service_id = "DELETING", None  # switched, then killed
    src = tmp_path / "state"
    src.mkdir()
    (src / "hits").write_text("7")
    snaps = snapshots.Snapshots(manager.conf)
    snaps.apply(sid, old_id, statesync.manifest(str(src)),
                lambda paths: statesync.export_tar(str(src), paths))
    op_id = heal_op(sid, {"pair": {"old": old_id, "new": new_id, "switched": True}},
                    state="RUNNING", attempts=1)
    assert engine(workflows.all_workflows(manager.cluster)).resume_all() == [op_id]
    op, svc = wait_ended(op_id)
    assert (op.state, op.attempts) == ("SUCCEEDED", 2), op.error
    assert (svc.state, svc.operation_id) == ("RUNNING", None)
    assert snaps.current(sid, old_id) == (None, None)
    state, meta = snaps.current(sid, new_id)
    assert open(os.path.join(state, "hits")).read() == "7"


def test_a_heal_with_no_room_fails_saying_what_to_do(edge, engine):  # noqa: F811
    _, alice, manager = edge
    nodes_down("ap-1", "ap-2", "ap-3")
    sid = add_service("web", "alice", "ap-2", ["ap-2"])
    # A replacement a killed attempt left half-made goes first.
    with db.session_scope() as ses:
        ses.add(models.Instance(service_id=sid, node_name="ap-1", state="STANDBY"))
    op_id = heal_op(sid, state="RUNNING", attempts=1)
    manager.engine = engine(workflows.all_workflows(manager.cluster))
    manager.engine.resume_all()
    op, svc = wait_ended(op_id)
    assert op.state == "FAILED" and op.attempts == 2
    with db.session_scope() as ses:
        [lost] = [i for i in ses.get(models.Service, sid).instances if i.state == "ACTIVE"]
    assert op.error == (
        "attempt 2 of 3: instance %s was lost with node ap-2 and cannot be re-placed: no other up, "
        "schedulable node has a free instance slot; add or enable a node, or scale "
        "another service in (it is tried again after [manager] node_lost_grace), or "
        "delete this service (rolled back)" % lost.id)
    # Left to the sweep (its node is down), and the service stays deletable.
    assert [i["state"] for i in alice("GET", "/v1/services/web")[1]["service"]["instances"]] \
        == ["ACTIVE", "DELETING"]
    assert (svc.state, svc.operation_id) == ("RUNNING", None)
    status, body = alice("DELETE", "/v1/services/web")
    assert status == 202, body
    assert wait_ended(body["operation"]["id"])[0].state == "SUCCEEDED"


def test_a_stop_cut_off_by_a_lost_node_leaves_the_service_to_a_heal(edge, engine):  # noqa: F811
    _, _, manager = edge
    sid = add_service("web", "alice", "ap-2", ["ap-2"])
    nodes_down("ap-1", "ap-3")  # no proxy to push to
    heartbeat("ap-2", 45)  # lost: its agent and instance refuse at once
    with db.session_scope() as ses:
        [inst] = ses.get(models.Service, sid).instances
        inst.address = "127.0.0.1"
        stop = engine_mod.new_operation(ses, "stop", ses.get(models.Service, sid),
                                        "EPILOGUE", ("RUNNING",), "stopped").id
    # The reference driver, asking ap-2's agent (refused at once).
    cluster = cluster_mod.Cluster(manager.conf, lxc.LxcDriver())
    manager.conf.set_override("drain_timeout", 0, group="manager")
    try:
        engine(workflows.all_workflows(cluster)).submit(stop)
        op, svc = wait_ended(stop, timeout=30)
    finally:
        manager.conf.clear_override("drain_timeout", group="manager")
    # Its state cannot be saved: the stop fails and gives the service back
    # as it was, not in ERROR, so that the heal can take it.
    assert op.state == "FAILED" and op.error.endswith("(rolled back)"), op.error
    assert (svc.state, svc.operation_id) == ("RUNNING", None)
    with db.session_scope() as ses:
        assert [i.state for i in ses.get(models.Service, sid).instances] == ["ACTIVE"]
    conf = manager.conf
    conf.set_override("node_lost_grace", 30, group="manager")
    conf.set_override("node_heartbeat_timeout", 10, group="manager")
    try:
        loss = nodeloss.NodeLoss(manager.cluster, manager.engine)
        loss.started -= s(3600)
        [heal] = loss.check()
        with db.session_scope() as ses:
            assert ses.get(models.Operation, heal).kind == "heal"
    finally:
        conf.clear_override("node_lost_grace", group="manager")
        conf.clear_override("node_heartbeat_timeout", group="manager")
