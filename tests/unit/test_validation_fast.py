"""The cheap check of a request body (api/validation.py ``_surely_valid``)
never lets through what openapi-core refuses: on real routes of the API,
every body it calls valid openapi-core finds nothing wrong with, and what
openapi-core refuses it leaves to openapi-core (which says what is wrong)."""
import flask
import pytest
from werkzeug.routing import Rule

from mec_conpaas.api import validation

CASES = [
    ("/v1/nodes/<node_id>/heartbeat", {"node_id": "n1"}, [
        ({"report": {"cpu_percent": 3, "stations": []}, "routes_version": "ab"}, True),
        ({"report": {}}, True),
        ({}, True),
        ({"report": []}, False),
        ({"report": {}, "routes_version": None}, False),
        ({"report": {}, "routes_version": 5}, False),
        ([], False),
    ]),
    ("/v1/nodes/register", {}, [
        ({"id": "n1", "name": "ap-1", "hostname": "h", "mac": "02:00:00:00:00:01",
          "address": "10.0.0.1", "agent_port": 9681, "agent_token": "x" * 43}, None),
        ({"id": "n1", "agent_port": "not a port"}, False),
    ]),
]


@pytest.mark.parametrize("rule,args,body,valid", [
    (rule, args, body, valid) for rule, args, cases in CASES for body, valid in cases])
def test_the_cheap_check_agrees_with_openapi_core(rule, args, body, valid):
    app = flask.Flask("t")
    path = rule.replace("<node_id>", args.get("node_id", ""))
    with app.test_request_context(path, method="POST", json=body,
                                   headers={"Authorization": "Bearer t"}):
        req = flask.request
        req.url_rule, req.view_args = Rule(rule), args
        errors = [e for e in validation.spec().iter_request_errors(validation._Request(req))
                  if not isinstance(e, validation.req_exc.SecurityValidationError)]
        fast = validation._surely_valid(req)
        if fast:
            assert not errors, errors
        if valid is not None:
            assert fast is valid and (not errors) is valid, (fast, errors)
    # With a query string openapi-core checks it all.
    with app.test_request_context(path + "?x=1", method="POST", json=body,
                                   headers={"Authorization": "Bearer t"}):
        flask.request.url_rule, flask.request.view_args = Rule(rule), args
        assert not validation._surely_valid(flask.request)
