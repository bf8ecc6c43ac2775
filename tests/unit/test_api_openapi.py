"""The OpenAPI document against the Flask app: the same routes, requests off
it refused with 400 naming the field, and answers that follow it (the
manager runs with [api] validate_responses here, on a real store)."""
import io
import json
import re
import time

import flask
import pytest
from openapi_core.contrib.flask import FlaskOpenAPIResponse
from openapi_core.validation.request.exceptions import SecurityValidationError

from mec_conpaas.api import app as app_mod
from mec_conpaas.api import validation
from tests.unit.test_api_nodes import add_service
from tests.unit.test_api_nodes import edge  # noqa: F401 (fixture)

# Routes other branches add; the document has them so that merges agree.
PENDING = {("post", "/v1/services/{name}/stop"), ("post", "/v1/services/{name}/start")}
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def api(edge, store):  # noqa: F811
    """(admin, alice, app) with every answer checked against the document."""
    store.set_override("validate_responses", True, group="api")
    admin, alice, manager = edge
    flask_app = app_mod.create_app(manager)
    admin.client = flask_app.test_client()
    alice.client = flask_app.test_client()
    yield admin, alice, flask_app
    store.clear_override("validate_responses", group="api")


def routes(flask_app):
    out = set()
    for rule in flask_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        out |= {(m.lower(), path) for m in rule.methods if m.lower() in METHODS}
    return out


def test_every_route_is_in_the_document_and_back(api):
    _, _, flask_app = api
    documented = {(m, p) for p, item in validation.document()["paths"].items()
                  for m in item if m in METHODS}
    assert routes(flask_app) - documented == set()
    assert documented - routes(flask_app) <= PENDING
    # openapi-core validated the document itself when loading it.
    assert validation.spec() is validation.spec()


def test_document_is_served_without_a_token(api):
    _, alice, flask_app = api
    resp = flask_app.test_client().get("/v1/openapi.json")
    assert resp.status_code == 200
    assert resp.get_json() == validation.document()
    # What Flask answers beyond the document still works.
    auth = {"Authorization": "Bearer " + alice.token}
    assert alice.client.head("/v1/services", headers=auth).status_code == 200
    assert alice.client.options("/v1/services", headers=auth).status_code == 200


@pytest.mark.parametrize("method,path,kwargs,words", [
    ("POST", "/v1/services/web/scale", {"json": {"count": "two"}},
     "count must be an integer >= 0"),
    ("POST", "/v1/services/web/scale", {"json": {"count": 1, "node": 5}},
     "node must be a node name"),
    ("POST", "/v1/services/web/scale", {"json": {"count": -1, "node": 5}},
     "count must be an integer >= 0; node must be a node name"),
    ("POST", "/v1/services/web/scale", {"json": []}, "request body must be a JSON object"),
    ("POST", "/v1/services/web/scale", {}, "this call needs a request body"),
    ("POST", "/v1/services/web/migrate", {"json": {"to": ""}},
     "migrate needs 'to': the target node name"),
    ("POST", "/v1/services/web/migrate", {"json": {"to": "ap-2", "order": "last"}},
     "unknown migration order 'last': use switch-first or freeze-first"),
    ("POST", "/v1/services/web/migrate", {"data": "to=ap-2",
                                          "content_type": "text/plain"},
     "request body must be application/json (it is text/plain)"),
    ("DELETE", "/v1/services/web?force=maybe", {}, "force must be true or false"),
    ("POST", "/v1/services", {"data": {"type": "web", "name": "x", "count": "many"}},
     "a new service needs count >= 1 (an integer)"),
    ("POST", "/v1/services", {"data": {"type": "web", "name": "Shop",
                                       "bundle": (io.BytesIO(b"x"), "a.tgz")}},
     "invalid service name 'Shop': use 1-32 lowercase"),
    ("POST", "/v1/services", {"data": {"type": "web", "name": "shop\n"}},
     "invalid service name 'shop\\n'"),
    ("POST", "/v1/services", {"data": {"name": "shop"}},
     "unknown service type '': use one of generic, web"),
    ("POST", "/v1/nodes/register", {"json": {"id": "n", "name": "n", "hostname": "h",
                                             "mac": "m", "address": "a",
                                             "agent_port": "x", "agent_token": "t"}},
     "agent_port: 'x' is not of type 'integer'"),
])
def test_off_schema_requests_get_400_naming_the_field(api, method, path, kwargs, words):
    admin, _, _ = api
    add_service("web", "admin", "ap-1", ["ap-1"])
    status, body = admin(method, path, **kwargs)
    assert status == 400 and body["error"]["code"] == "bad_request", body
    assert words in body["error"]["message"], body


def test_long_values_are_cut_in_messages(api):
    admin, _, _ = api
    status, body = admin("POST", "/v1/services", data={"type": "web",
                                                       "name": "A" * 5000})
    assert status == 400 and len(body["error"]["message"]) < 200, body
    assert body["error"]["message"].startswith("invalid service name 'AAAA")


def test_token_and_role_come_before_the_schema(api):
    admin, alice, flask_app = api
    anonymous = flask_app.test_client().post("/v1/services/web/scale", json={})
    assert anonymous.status_code == 401
    # A tenant cannot tell an admin-only path from an unknown one.
    assert alice("POST", "/v1/nodes/ap-1/drain", json={"reason": 7}) == (
        404, {"error": {"code": "not_found", "message": "no such API path"}})
    assert admin("POST", "/v1/nodes/ap-1/drain", json={"reason": 7})[0] == 400


def test_answers_follow_the_document(api):
    """Each kind of answer of each route, checked by the after-request hook
    (an answer off the document would be a 500)."""
    admin, alice, _ = api
    add_service("web", "alice", "ap-1", ["ap-1"])
    add_service("mover", "alice", "ap-3", ["ap-3"], port=20010)
    add_service("idle", "alice", "ap-1", ["ap-1"], port=20020)
    calls = [
        (admin, "POST", "/v1/nodes/ap-3/drain", {"json": {"reason": "x"}}, 202),
        (admin, "POST", "/v1/nodes/ap-3/enable", {}, 200),
        (admin, "POST", "/v1/nodes/ap-2/drain", {}, 200),
        (admin, "POST", "/v1/nodes/ap-2/enable", {}, 200),
        (alice, "GET", "/v1/nodes", {}, 200), (alice, "GET", "/v1/nodes/ap-1", {}, 200),
        (alice, "GET", "/v1/nodes/ap-9", {}, 404), (alice, "GET", "/v1/services", {}, 200),
        (alice, "GET", "/v1/services/web", {}, 200),
        (alice, "POST", "/v1/services", {"data": {"type": "web", "name": "new"}}, 202),
        (alice, "POST", "/v1/services", {"data": {"type": "web", "name": "new"}}, 409),
        (alice, "POST", "/v1/services/web/scale", {"json": {"count": 3}}, 202),
        (alice, "POST", "/v1/services/web/scale", {"json": {"count": 3}}, 409),
        (alice, "DELETE", "/v1/services/ghost", {}, 404),
        (alice, "DELETE", "/v1/services/new?force=true", {}, 403),
        (admin, "DELETE", "/v1/services/ghost?force=true", {}, 404),
        (alice, "DELETE", "/v1/services/new", {}, 409),  # its create holds it
        (alice, "DELETE", "/v1/services/idle", {}, 202),
        (alice, "POST", "/v1/services/mover/migrate", {"json": {"to": "ap-1"}}, 409),
        (alice, "GET", "/v1/bundles/" + "0" * 64, {}, 404),
        (admin, "GET", "/v1/bundles/" + "0" * 64, {}, 404),
        (admin, "GET", "/v1/nodes/enrollment", {}, 404),
        (admin, "POST", "/v1/nodes/register", {"json": {
            "id": "n-4", "name": "ap-4", "hostname": "h", "mac": "02:00:00:00:00:04",
            "address": "10.0.0.4", "agent_port": 9681, "agent_token": "t"}}, 200),
        (admin, "POST", "/v1/nodes/n-4/heartbeat", {"json": {"report": {}}}, 200),
        (alice, "GET", "/v1/operations", {}, 200),
    ]
    for who, method, path, kwargs, status in calls:
        got, body = who(method, path, **kwargs)
        assert got == status, (method, path, body)
    ops = body["operations"]
    assert sorted(o["kind"] for o in ops) == ["create", "delete", "drain", "scale"]
    assert alice("GET", "/v1/operations/" + ops[0]["id"])[0] == 200


def test_an_answer_off_the_document_is_a_500_that_says_so(api, monkeypatch):
    _, alice, _ = api
    add_service("web", "alice", "ap-1", ["ap-1"])
    view = app_mod.service_view
    monkeypatch.setattr(app_mod, "service_view", lambda *a, **k: dict(view(*a, **k), port="80"))
    status, body = alice("GET", "/v1/services/web")
    assert status == 500 and body["error"]["code"] == "answer_off_schema"
    assert "'80' is not of type 'integer'" in body["error"]["message"], body


def test_validation_cost(api):
    """What the checks cost per call, printed for the README: a request's
    body check and a 20-service list answer's check."""
    _, alice, flask_app = api
    for k in range(20):
        add_service("s%d" % k, "alice", "ap-1", ["ap-1", "ap-2"], port=21000 + k)
    status, body = alice("GET", "/v1/services")
    assert status == 200 and len(body["services"]) == 20
    spec = validation.spec()
    with flask_app.test_request_context("/v1/services/s1/scale", method="POST",
                                        json={"count": 2, "node": "ap-1"}):
        req = validation._Request(flask.request)
        per_request = timed(lambda: list(spec.iter_request_errors(req))[1:] == [])
    with flask_app.test_request_context("/v1/services"):
        req = validation._Request(flask.request)
        answer = FlaskOpenAPIResponse(flask_app.response_class(
            json.dumps(body), mimetype="application/json"))
        per_answer = timed(lambda: all(isinstance(e, SecurityValidationError) for e
                                       in spec.iter_response_errors(req, answer)))
    print("request check %.2f ms; answer check (20 services) %.2f ms" % (
        per_request * 1000, per_answer * 1000))


def timed(check, rounds=20):
    start = time.perf_counter()
    for _ in range(rounds):
        assert check()
    return (time.perf_counter() - start) / rounds
