"""service stop/start at the API: states they fit, the operations they
store, and a start refused when the saved instances find no room (a real
store; the workflows do not run)."""
import json
import os

from sqlalchemy import select

from mec_conpaas.db import models
from mec_conpaas.db import session as db
from tests.unit.test_api_nodes import add_service
from tests.unit.test_api_nodes import edge  # noqa: F401 (fixture)


def state_of(name):
    with db.session_scope() as s:
        return s.scalar(select(models.Service.state).where(models.Service.name == name))


def test_stop_then_start_are_operations(edge):  # noqa: F811
    _, alice, manager = edge
    sid = add_service("shop", "alice", "ap-1", ["ap-1", "ap-2"])
    status, body = alice("POST", "/v1/services/shop/start")
    assert status == 409 and "only when STOPPED" in body["error"]["message"]
    status, body = alice("POST", "/v1/services/shop/stop")
    assert status == 202, body
    assert body["operation"]["kind"] == "stop"
    assert body["operation"]["params"] == {"count": 2}
    assert body["service"]["state"] == "EPILOGUE"
    assert manager.engine.submitted == [body["operation"]["id"]]
    status, body = alice("POST", "/v1/services/shop/stop")
    assert status == 409 and "busy with operation" in body["error"]["message"]
    # What the stop workflow leaves: no instance, the state saved.
    saved = manager.cluster.saved_dir(sid)
    os.makedirs(saved)
    with open(os.path.join(saved, "index.json"), "w") as f:
        json.dump([{"instance": "a", "role": "master", "node": "ap-1", "file": "a.tar"},
                   {"instance": "b", "role": "worker", "node": "ap-2", "file": "b.tar"}], f)
    with db.session_scope() as s:
        svc = s.get(models.Service, sid)
        svc.state, svc.operation_id = "STOPPED", None
        for inst in svc.instances:
            s.delete(inst)
    status, body = alice("POST", "/v1/services/shop/start")
    assert status == 202, body
    assert body["operation"]["kind"] == "start"
    assert body["operation"]["params"] == {"count": 2}
    assert state_of("shop") == "PROLOGUE"


def test_start_needs_room_for_every_saved_instance(edge):  # noqa: F811
    _, alice, manager = edge
    add_service("full", "alice", "ap-1", ["ap-1"] * 3 + ["ap-2"] * 3 + ["ap-3"] * 2,
                port=20001)
    sid = add_service("shop", "alice", "ap-1", [], state="STOPPED")
    os.makedirs(manager.cluster.saved_dir(sid))
    with open(os.path.join(manager.cluster.saved_dir(sid), "index.json"), "w") as f:
        json.dump([{"instance": str(n), "role": "worker", "node": "ap-1",
                    "file": "%d.tar" % n} for n in range(2)], f)
    status, body = alice("POST", "/v1/services/shop/start")
    assert status == 409, body
    assert body["error"]["code"] == "insufficient_capacity"
    assert "had 2 instance(s)" in body["error"]["message"]
    assert "1 free slot(s)" in body["error"]["message"]
    assert state_of("shop") == "STOPPED"
    assert not manager.engine.submitted
