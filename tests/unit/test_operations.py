"""One operation at a time per service, decided by the store; store errors
as JSON; retries with a limit; nothing left stuck.  A real SQLite store and
the real API, engine and workflows; nodes are down (or not called), so no
container is needed."""
import datetime
import threading
import time

import pytest
import sqlalchemy
from sqlalchemy import select
from sqlalchemy import text

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.manager import engine as engine_mod
from mec_conpaas.manager import workflows
from tests.unit.test_api_nodes import Api
from tests.unit.test_api_nodes import add_service
from tests.unit.test_api_nodes import edge  # noqa: F401  (fixture)

CALLS = {
    "scale": ("POST", "/v1/services/web/scale", {"json": {"count": 2}}),
    "migrate": ("POST", "/v1/services/web/migrate", {"json": {"to": "ap-2"}}),
    "delete": ("DELETE", "/v1/services/web", {}),
}


def race(app, token, kinds):
    """Release one call per kind at the same instant; their answers."""
    barrier = threading.Barrier(len(kinds))
    out = [None] * len(kinds)

    def call(n, kind):
        api = Api(app, token)  # a client per thread
        method, path, kwargs = CALLS[kind]
        barrier.wait()
        out[n] = api(method, path, **kwargs)
    threads = [threading.Thread(target=call, args=(n, k)) for n, k in enumerate(kinds)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_two_mutations_released_together_exactly_one_wins(edge):  # noqa: F811
    admin, _, manager = edge
    sid = add_service("web", "admin", "ap-1", ["ap-1"])
    app = admin.client.application
    pairs = [("scale", "scale"), ("migrate", "migrate"), ("scale", "delete"),
             ("delete", "migrate"), ("delete", "delete")]
    for n in range(20):
        kinds = pairs[n % len(pairs)]
        answers = race(app, admin.token, kinds)
        assert sorted(a[0] for a in answers) == [202, 409], (kinds, answers)
        won = next(a[1] for a in answers if a[0] == 202)["operation"]
        lost = next(a[1] for a in answers if a[0] == 409)["error"]
        assert "busy with operation %s (%s, PENDING)" % (won["id"], won["kind"]) \
            in lost["message"], lost
        with db.session_scope() as s:
            svc = s.get(models.Service, sid)
            assert svc.operation_id == won["id"]
            assert s.scalars(select(models.Operation.id)).all() == [won["id"]]
            # The engine would run it; end it by hand for the next round.
            s.delete(s.get(models.Operation, won["id"]))
            svc.operation_id, svc.state = None, "RUNNING"
    assert len(manager.engine.submitted) == 20


def test_delete_during_create_gets_409_naming_the_create(edge):  # noqa: F811
    admin, alice, _ = edge
    status, body = alice("POST", "/v1/services", data={"type": "web", "name": "new"})
    assert status == 202, body
    create = body["operation"]["id"]
    assert body["service"]["operation"] == create
    status, body = alice("DELETE", "/v1/services/new")
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert body["error"]["message"] == (
        "service new is busy with operation %s (create, PENDING): wait until it "
        "ends (mec-conpaas operation show %s), then retry" % (create, create))
    # Only admins force; the answer says what to do instead.
    status, body = alice("DELETE", "/v1/services/new?force=true")
    assert status == 403 and "only an admin" in body["error"]["message"]
    assert alice("DELETE", "/v1/services/new?force=maybe")[0] == 400
    status, body = alice("GET", "/v1/services/new")
    assert body["service"]["state"] == "INIT"


def test_store_errors_are_clear_json(edge):  # noqa: F811
    admin, _, _ = edge
    add_service("web", "admin", "ap-1", ["ap-1"])
    with db.get_engine().begin() as c:
        c.execute(text("CREATE TRIGGER no_ops BEFORE INSERT ON operations BEGIN "
                       "SELECT RAISE(ABORT, 'constraint broken'); END"))
    status, body = admin("POST", "/v1/services/web/scale", json={"count": 2})
    assert status == 409 and body["error"]["code"] == "conflict"
    assert "concurrent change" in body["error"]["message"]
    assert "constraint broken" not in str(body) and "SQL" not in str(body)
    with db.get_engine().begin() as c:
        c.execute(text("DROP TRIGGER no_ops"))
        c.execute(text("DROP TABLE operations"))
    status, body = admin("POST", "/v1/services/web/scale", json={"count": 2})
    assert status == 503 and body["error"]["code"] == "store_unavailable"
    assert "no such table" not in str(body)
    with db.session_scope() as s:
        assert s.scalar(select(models.Service)).state == "RUNNING"


class Failing(workflows.Workflow):
    """A workflow whose every attempt fails the way a node does."""

    def __init__(self, cluster, error=exception.NodeError("node ap-1 is gone")):
        super().__init__(cluster)
        self.error = error
        self.runs = []
        self.rollbacks = []

    def run(self, ctx):
        self.runs.append((ctx.attempts, ctx.resumed))
        self.set_state(ctx.service_id, "ADAPTING")
        raise self.error

    def rollback(self, ctx, message):
        self.rollbacks.append(message)


def held_op(sid, kind="scale", state="PENDING", attempts=0, journal=None):
    with db.session_scope() as s:
        svc = s.get(models.Service, sid)
        op = models.Operation(tenant_id=svc.tenant_id, service_id=sid,
                              service_name=svc.name, kind=kind, state=state,
                              attempts=attempts, params={}, journal=journal or {})
        s.add(op)
        s.flush()
        svc.operation_id, svc.state = op.id, "ADAPTING"
        return op.id


def wait_ended(op_id, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session_scope() as s:
            op = s.get(models.Operation, op_id)
            svc = s.get(models.Service, op.service_id)
            if op.state in engine_mod.TERMINAL:
                return op, svc
        time.sleep(0.02)
    pytest.fail("operation %s never ended" % op_id)


@pytest.fixture
def engine(edge):  # noqa: F811
    edge[2].conf.set_override("operation_max_attempts", 3, group="manager")
    edge[2].conf.set_override("operation_retry_delay", 0, group="manager")
    engines = []

    def make(wfs):
        engines.append(engine_mod.Engine(wfs, edge[2].conf))
        return engines[-1]
    yield make
    for eng in engines:
        eng.shutdown()
    edge[2].conf.clear_override("operation_max_attempts", group="manager")
    edge[2].conf.clear_override("operation_retry_delay", group="manager")


def test_an_operation_that_always_fails_ends_failed_after_the_limit(edge, engine):  # noqa: F811
    failing = Failing(edge[2].cluster)
    eng = engine({"scale": failing})
    op_id = held_op(add_service("web", "alice", "ap-1", ["ap-1"]))
    eng.submit(op_id)
    op, svc = wait_ended(op_id)
    assert failing.runs == [(1, False), (2, True), (3, True)]
    assert (op.state, op.attempts) == ("FAILED", 3)
    assert op.error == "attempt 3 of 3: node ap-1 is gone (rolled back)"
    assert failing.rollbacks == ["attempt 3 of 3: node ap-1 is gone"]
    # Released, and left in a state that accepts calls, with the reason.
    assert (svc.operation_id, svc.state, svc.error) == (None, "RUNNING", op.error)
    # What the user caused is not retried.
    refused = Failing(edge[2].cluster, exception.Conflict("node ap-2 is down"))
    eng = engine({"scale": refused})
    op_id = held_op(svc.id)
    eng.submit(op_id)
    op, svc = wait_ended(op_id)
    assert (op.state, op.attempts, len(refused.runs)) == ("FAILED", 1, 1)


def test_a_crash_loop_gives_up_and_rolls_back_once(edge, engine):  # noqa: F811
    sid = add_service("web", "alice", "ap-1", ["ap-1"])
    failing = Failing(edge[2].cluster)
    # Three starts, each killed mid-attempt: the next start gives up.
    op_id = held_op(sid, state="RUNNING", attempts=3)
    assert engine({"scale": failing}).resume_all() == [op_id]
    op, svc = wait_ended(op_id)
    assert failing.runs == []
    assert op.error == ("gave up after 3 attempt(s): the manager stopped during "
                        "each (rolled back)")
    assert (svc.state, svc.operation_id) == ("RUNNING", None)
    # Killed during that rollback too: not rolled back twice.
    op_id = held_op(sid, state="RUNNING", attempts=3, journal={"rolling_back": True})
    engine({"scale": failing}).resume_all()
    op, svc = wait_ended(op_id)
    assert len(failing.rollbacks) == 1 and op.state == "FAILED"
    assert (svc.state, svc.operation_id) == ("RUNNING", None)


def nodes_down(*names):
    with db.session_scope() as s:
        for n in names:
            node = s.scalar(select(models.Node).where(models.Node.name == n))
            # Silent for an hour: the monitor has marked it down.
            node.last_heartbeat = models.utcnow() - datetime.timedelta(hours=1)
            node.state = "down"


def test_delete_with_a_down_node_and_the_sweep(edge, engine):  # noqa: F811
    admin, alice, manager = edge
    nodes_down("ap-1", "ap-2", "ap-3")
    eng = engine(workflows.all_workflows(manager.cluster))
    manager.engine = eng
    add_service("web", "alice", "ap-1", ["ap-1", "ap-2"])
    status, body = alice("DELETE", "/v1/services/web")
    assert status == 202
    op, _ = wait_ended(body["operation"]["id"])
    assert op.state == "SUCCEEDED", op.error
    with db.session_scope() as s:
        left = s.scalars(select(models.Instance)).all()
        assert s.scalars(select(models.Service)).all() == []
        # Detached, still counting their nodes' slots, for the sweep.
        assert [(i.service_id, i.state) for i in left] == [(None, "DELETING")] * 2
        assert op.step == "done; on a down node, removed when it is back: " + \
            ", ".join(sorted("%s@%s" % (i.id, i.node_name) for i in left))
        assert manager.cluster.capacity(s)["ap-1"]["used"] == 1
    sweeper = workflows.Sweeper(manager.cluster)
    assert sweeper.sweep() == []  # the nodes are still down
    # An admin's force delete forgets what it cannot reach.
    add_service("own", "admin", "ap-3", ["ap-3"], port=20020)
    status, body = admin("DELETE", "/v1/services/own?force=true")
    op, _ = wait_ended(body["operation"]["id"])
    assert op.state == "SUCCEEDED" and op.params == {"force": True}
    with db.session_scope() as s:
        assert s.scalars(select(models.Instance).where(
            models.Instance.node_name == "ap-3")).all() == []


def test_sweep_frees_a_service_held_by_an_ended_operation(edge):  # noqa: F811
    _, alice, manager = edge
    sid = add_service("web", "alice", "ap-1", ["ap-1"])
    nodes_down("ap-1", "ap-2", "ap-3")
    op_id = held_op(sid)
    with db.session_scope() as s:
        s.get(models.Operation, op_id).state = "FAILED"
        s.get(models.Operation, op_id).error = "rollback failed too: node gone"
    assert alice("POST", "/v1/services/web/scale", json={"count": 2})[0] == 409
    workflows.Sweeper(manager.cluster).sweep()
    with db.session_scope() as s:
        svc = s.get(models.Service, sid)
        assert (svc.state, svc.operation_id, svc.error) == (
            "RUNNING", None, "rollback failed too: node gone")
    with db.session_scope() as s:
        for n in s.scalars(select(models.Node)):
            n.last_heartbeat = models.utcnow()
    status, body = alice("POST", "/v1/services/web/scale", json={"count": 2})
    assert status == 202, body


def test_the_sweep_leaves_a_service_its_operation_released_meanwhile(edge):  # noqa: F811
    """The sweep reads the held services, then each one's operation: an
    operation that ended (releasing its service RUNNING) between those two
    reads left a stale row, and the sweep wrote ERROR over the service
    (test_bad_input's 'service cnt is ERROR' right after a successful
    create)."""
    sid = add_service("web", "alice", "ap-1", ["ap-1"])
    op_id = held_op(sid, kind="create", state="RUNNING")
    with db.session_scope() as s:
        s.get(models.Service, sid).state = "PROLOGUE"

    def end_it():  # the create's last commit, from another connection
        with db.session_scope() as other:
            other.get(models.Service, sid).state = "RUNNING"
            other.get(models.Operation, op_id).state = "SUCCEEDED"
            engine_mod.release(other, op_id)

    ended = []

    def between(orm_ctx):
        if not ended and orm_ctx.is_select and any(
                d.get("entity") is models.Operation
                for d in orm_ctx.statement.column_descriptions):
            ended.append(end_it())

    with db.session_scope() as s:
        sqlalchemy.event.listen(s, "do_orm_execute", between)
        engine_mod.release_ended(s)
    assert ended
    with db.session_scope() as s:
        svc = s.get(models.Service, sid)
        assert (svc.state, svc.operation_id, svc.error) == ("RUNNING", None, None)
