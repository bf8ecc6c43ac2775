"""OpenStack enrollment on the running manager: a node's first boot fetches
the deployment's service credentials with its registration token."""
import json
import os

import requests

from tests.functional.conftest import enrollment_file
from tests.functional.conftest import new_tenant

CREDS = {"controller_host": "10.241.0.1",
         "passwords": {"rabbit": "rabbit-1", "nova": "nova-1", "placement": "placement-1",
                       "neutron": "neutron-1", "cinder": "cinder-1",
                       "cinder_db": "cinder-db-1"}}


def enroll(edge, token):
    """(status, body) of GET /v1/nodes/enrollment, as a node's first boot does it."""
    headers = {"Authorization": "Bearer " + token} if token else {}
    resp = requests.get(edge.manager_url() + "/v1/nodes/enrollment", headers=headers,
                        timeout=10)
    return resp.status_code, resp.json()


def write(edge, content):
    with open(enrollment_file(edge.state), "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))


def node_token(edge):
    return open(edge.path("node-token")).read().strip()


def manager_log(edge):
    with open(edge.path("logs", "manager.log"), errors="replace") as f:
        return f.read()


def test_nodes_and_admins_get_the_file_and_rotation_needs_no_restart(edge, admin):
    write(edge, CREDS)
    assert enroll(edge, node_token(edge)) == (200, {"openstack": CREDS})
    assert enroll(edge, admin.token) == (200, {"openstack": CREDS})
    assert "OpenStack enrollment fetched with node token" in manager_log(edge)
    # The admin rotates a password: the same manager process serves the new one.
    pid = edge._pid("manager")
    rotated = dict(CREDS, passwords=dict(CREDS["passwords"], rabbit="rabbit-2"))
    write(edge, rotated)
    assert enroll(edge, node_token(edge)) == (200, {"openstack": rotated})
    assert edge._pid("manager") == pid


def test_tenants_and_anonymous_callers_are_refused(edge):
    write(edge, CREDS)
    tenant = new_tenant(edge, "tenant-enroll")
    assert enroll(edge, tenant.token) == (404, {"error": {
        "code": "not_found", "message": "no such API path"}})
    status, body = enroll(edge, None)
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_missing_or_incomplete_file_is_503_naming_the_file(edge):
    path = enrollment_file(edge.state)
    incomplete = dict(CREDS, passwords={k: v for k, v in CREDS["passwords"].items()
                                        if k != "cinder_db"})
    try:
        for content, words in ((None, "cannot be read (No such file or directory)"),
                               (incomplete, "lacks passwords.cinder_db")):
            if content is None and os.path.exists(path):
                os.unlink(path)
            elif content is not None:
                write(edge, content)
            status, body = enroll(edge, node_token(edge))
            assert status == 503 and body["error"]["code"] == "enrollment_unavailable", body
            message = body["error"]["message"]
            assert path in message and words in message, message
            assert " ERROR mec_conpaas.manager.enrollment enrollment refused: " \
                + message in manager_log(edge)
    finally:
        write(edge, CREDS)
