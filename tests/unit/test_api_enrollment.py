"""GET /v1/nodes/enrollment under each [manager] openstack_enrollment_file
setting, on a real store (the functional tests cover the running manager)."""
import json
import logging

import pytest

from mec_conpaas.api import app as app_mod
from mec_conpaas.db import session as db
from mec_conpaas.manager import auth
from tests.unit.test_api_nodes import Api
from tests.unit.test_api_nodes import Manager

CREDS = {"controller_host": "192.0.2.10",
         "passwords": {"rabbit": "r-secret", "nova": "n-secret", "placement": "p-secret",
                       "neutron": "q-secret", "cinder": "c-secret",
                       "cinder_db": "cdb-secret"}}


@pytest.fixture
def api(store, tmp_path):
    """(set the enrollment file option, node client, tenant client, file path)."""
    store.set_override("state_path", str(tmp_path), group=None)
    flask_app = app_mod.create_app(Manager(store))
    with db.session_scope() as s:
        node = auth.issue(s, "node", "node-agent")
        alice = auth.issue(s, "member", "alice", auth.ensure_tenant(s, "alice").id)

    def configure(path):
        store.set_override("openstack_enrollment_file", path, group="manager")

    yield configure, Api(flask_app, node), Api(flask_app, alice), tmp_path / "enroll.json"
    store.clear_override("state_path")
    store.clear_override("openstack_enrollment_file", group="manager")


def test_not_configured_is_404_with_what_to_do(api):
    _, node, alice, _ = api
    status, body = node("GET", "/v1/nodes/enrollment")
    assert status == 404 and body["error"]["code"] == "enrollment_not_configured"
    assert "deploy the node without OpenStack" in body["error"]["message"]
    assert "[manager] openstack_enrollment_file" in body["error"]["message"]
    # Tenants cannot tell a configured manager from one that is not.
    assert alice("GET", "/v1/nodes/enrollment") == (404, {"error": {
        "code": "not_found", "message": "no such API path"}})


def test_only_the_six_passwords_are_served_and_who_is_logged(api, caplog):
    configure, node, _, path = api
    path.write_text(json.dumps(dict(CREDS, passwords=dict(
        CREDS["passwords"], admin="admin-secret", keystone_db="k"), note="x")))
    configure(str(path))
    with caplog.at_level(logging.INFO, logger="mec_conpaas"):
        assert node("GET", "/v1/nodes/enrollment") == (200, {"openstack": CREDS})
    logged = [r.getMessage() for r in caplog.records]
    assert any("OpenStack enrollment fetched with node token" in m for m in logged), logged
    assert not any("secret" in m for m in logged), logged


BROKEN = {
    "not-json": ('{"controller_host": ', "is not valid JSON"),
    "not-utf8": (b"\xff\xfe{}", "is not valid JSON"),
    "list": ("[]", "is not a JSON object"),
    "no-host": (dict(CREDS, controller_host=""), "lacks controller_host"),
    "host-not-text": (dict(CREDS, controller_host=["h"]), "lacks controller_host"),
    "no-passwords": ({"controller_host": "h"}, "lacks passwords (a JSON object)"),
    "no-cinder-db": (dict(CREDS, passwords={k: v for k, v in CREDS["passwords"].items()
                                            if k != "cinder_db"}),
                     "lacks passwords.cinder_db (each a non-empty string)"),
    "empty-and-number": (dict(CREDS, passwords=dict(CREDS["passwords"], nova=" ", rabbit=5)),
                         "lacks passwords.rabbit, passwords.nova"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_unusable_file_is_503_naming_the_file_and_logged(api, caplog, case):
    configure, node, _, path = api
    content, words = BROKEN[case]
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    configure(str(path))
    with caplog.at_level(logging.ERROR, logger="mec_conpaas"):
        status, body = node("GET", "/v1/nodes/enrollment")
    assert status == 503 and body["error"]["code"] == "enrollment_unavailable", body
    message = body["error"]["message"]
    assert str(path) in message and words in message, message
    assert [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR] == ["enrollment refused: " + message]


def test_missing_file_and_directory_are_503(api, tmp_path):
    configure, node, _, path = api
    for target, words in ((path, "No such file or directory"),
                          (tmp_path, "Is a directory")):
        configure(str(target))
        status, body = node("GET", "/v1/nodes/enrollment")
        assert status == 503, body
        assert "file %s cannot be read (%s)" % (target, words) in body["error"]["message"]
