"""Routes in heartbeat answers only when the node's copy is old
(manager/routecache.py), on the real API and store: an agent echoing the
current version gets none; a node joining, moving or leaving changes the
version at once, and the next answer carries the new list."""
from mec_conpaas.api import app as app_mod
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from tests.unit.test_api_nodes import Api
from tests.unit.test_api_nodes import edge  # noqa: F401 (fixture)
from tests.unit.test_join import _join_body
from tests.unit.test_join import _registration
from tests.unit.test_join import _token


def test_routes_only_when_the_echoed_version_is_old(edge):  # noqa: F811
    admin, _alice, manager = edge
    flask_app = app_mod.create_app(manager)
    _tid, secret = _token(uses=3)
    nodes = []
    for n in (1, 2):
        body = _join_body(n)
        code, got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=body)
        me = Api(flask_app, got["credential"])
        assert me("POST", "/v1/nodes/register",
                  json=_registration(body, "192.0.2.1%d" % n))[0] == 200
        nodes.append((body, me))
    (b1, n1), (b2, n2) = nodes

    def beat(version=None):
        body = {"report": {}}
        if version:
            body["routes_version"] = version
        code, hb = n1("POST", "/v1/nodes/%s/heartbeat" % b1["id"], json=body)
        assert code == 200, hb
        return hb

    first = beat()  # an agent of before (no version): the routes, as before
    assert {r["node"] for r in first["routes"]} == {"pi-2"}
    v1 = first["routes_version"]
    # Echoing it: nothing else changed, no routes, the same version.
    again = beat(v1)
    assert "routes" not in again and again["routes_version"] == v1
    # A third node joins: the version changes at once, the list with it.
    body3 = _join_body(3)
    code, got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=body3)
    n3 = Api(flask_app, got["credential"])
    assert n3("POST", "/v1/nodes/register",
              json=_registration(body3, "192.0.2.13"))[0] == 200
    hb = beat(v1)
    assert hb["routes_version"] != v1
    assert {r["node"] for r in hb["routes"]} == {"pi-2", "pi-3"}
    v2 = hb["routes_version"]
    assert "routes" not in beat(v2)
    # Heartbeats (last_heartbeat, report) change nothing routes are made of.
    assert n2("POST", "/v1/nodes/%s/heartbeat" % b2["id"],
              json={"report": {"cpu_percent": 3}})[0] == 200
    assert "routes" not in beat(v2)
    # pi-2 re-registers from another address: routes via the new one.
    assert n2("POST", "/v1/nodes/register",
              json=_registration(b2, "192.0.2.22"))[0] == 200
    hb = beat(v2)
    assert {r["via"] for r in hb["routes"] if r["node"] == "pi-2"} == {"192.0.2.22"}
    v3 = hb["routes_version"]
    # remove-node: gone from the very next answer.
    with db.session_scope() as s:
        assert s.get(models.Node, body3["id"]) is not None
    assert admin("DELETE", "/v1/nodes/pi-3")[0] == 200
    hb = beat(v3)
    assert {r["node"] for r in hb["routes"]} == {"pi-2"}


def test_the_list_is_encoded_once_and_answers_decode_as_before(store):
    """The routes are encoded once per version and spliced into each
    answer: what an agent decodes is what ``flask.jsonify`` of the list
    gave, the asker's own entries left out, and the version is the digest
    it always was (an upgraded manager does not resend every node its
    routes)."""
    import hashlib
    import json

    import flask

    from mec_conpaas.manager import allocation
    from mec_conpaas.manager import routecache
    with db.session_scope() as s:  # no node yet: the empty list has a version too
        assert routecache.answer(s, "n2", None)["routes_version"] == hashlib.sha256(
            b"[]").hexdigest()[:16]
    with db.session_scope() as s:
        for n in (1, 2, 3):
            s.add(models.Node(id="n%d" % n, name="pi-%d" % n, hostname="pi-%d" % n,
                              mac="02:00:00:00:00:0%d" % n, address="192.0.2.%d" % n,
                              agent_port=9681, agent_token="x", max_instances=3,
                              instance_network="10.9.%d.0/24" % n, report={},
                              last_heartbeat=models.utcnow()))
    app = flask.Flask("t")
    with db.session_scope() as s, app.app_context():
        rows = allocation.routes(s, None)
        got = routecache.answer(s, "n2", None)
        assert got["routes_version"] == hashlib.sha256(
            json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
        assert isinstance(got["routes"], routecache.Encoded)
        answer = {"ok": True, "allocation": {"a": [1, None]}, **got}
        ours = json.loads(routecache.jsonify(**answer).get_data())
        plain = dict(answer, routes=[r for r in rows if r["node"] != "pi-2"])
        assert ours == json.loads(flask.jsonify(**plain).get_data())
        assert {r["node"] for r in ours["routes"]} == {"pi-1", "pi-3"}
        # No encoded value: flask's own answer; an encoded one alone, too.
        assert routecache.jsonify(ok=True).get_json() == {"ok": True}
        assert json.loads(routecache.jsonify(r=routecache.Encoded("[]")).get_data()) \
            == {"r": []}
