"""schemathesis fuzzes the running manager from its own OpenAPI document,
with an admin's token and a tenant's: no 5xx, no answer off the document,
and nothing left half-made (services, operations, containers, nodes).

Creates start real containers: each service a case creates is deleted
before the next case runs, so at most one exists at a time; the example
counts below bound the run.
"""
import os
import traceback

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as oa_checks

from tests.functional.conftest import all_containers
from tests.functional.conftest import enrollment_file
from tests.functional.conftest import new_tenant
from tests.functional.test_enrollment import CREDS
from tests.functional.test_enrollment import write

# Registering writes a node row that no API call removes (the unit tests
# check its answers); the dashboard's event stream does not end while the
# page is open (tests/unit/test_web.py checks it); the rest is fuzzed.
EXCLUDED = ["registerNode", "getDashboardEvents"]  # a list: schemathesis ignores a tuple
CHECKS = [st_checks.not_a_server_error, oa_checks.status_code_conformance,
          oa_checks.content_type_conformance, oa_checks.response_schema_conformance,
          oa_checks.negative_data_rejection, oa_checks.ignored_auth]
ENDED = ("SUCCEEDED", "FAILED", "ROLLED_BACK")


@pytest.fixture(scope="module")
def clients(edge, admin):
    """Both roles, on a manager with a usable enrollment file (a missing one
    is a deliberate 503, which would hide a real 5xx)."""
    path = enrollment_file(edge.state)
    before = open(path).read() if os.path.exists(path) else None
    write(edge, CREDS)
    yield {"admin": admin, "tenant": new_tenant(edge, "fuzz")}
    if before is None:
        os.unlink(path)
    else:
        write(edge, before)


@pytest.fixture(scope="module")
def operations(edge, clients):
    schema = schemathesis.openapi.from_url(edge.manager_url() + "/v1/openapi.json")
    return [r.ok() for r in schema.exclude(operation_id=EXCLUDED).get_all_operations()]


def undo(client, case, response):
    """Wait for what an accepted call started, then delete every service of
    the client's tenant and enable a drained node: the next case starts from
    an empty edge."""
    body = response.json()
    ops = [body["operation"]] if "operation" in body else body.get("operations", [])
    client.wait_all([o["id"] for o in ops], timeout=180)
    for svc in client.services():
        client.wait(client.delete_service(svc["name"])["operation"]["id"], timeout=180)
    if case.operation.label == "POST /v1/nodes/{name}/drain":
        client.enable_node(case.path_parameters["name"])


def fuzz(operations, client, max_examples):
    """Every operation with positive and negative cases; all failures at once."""
    auth = {"Authorization": "Bearer " + client.token}
    failures = []
    for op in operations:
        # No shrinking: replaying cases on a live edge is slow and racy.
        @hypothesis.settings(max_examples=max_examples, deadline=None,
                             derandomize=True, database=None,
                             phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                             suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(case=op.as_strategy(generation_mode=GenerationMode.POSITIVE)
                          | op.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        def run(case):
            response = case.call(headers=auth)
            try:
                case.validate_response(response, checks=CHECKS, headers=auth)
            finally:
                if response.status_code in (200, 202) and case.method == "POST":
                    undo(client, case, response)

        try:
            run()
        except (Exception, BaseExceptionGroup) as e:  # checks' failures, shrunk
            failures.append("%s: %s" % (op.label, "".join(
                traceback.format_exception(e))[-3000:]))
    assert not failures, "\n\n".join(failures)


def test_fuzz_as_tenant(operations, clients):
    fuzz(operations, clients["tenant"], max_examples=30)


def test_fuzz_as_admin(operations, clients):
    fuzz(operations, clients["admin"], max_examples=30)


def test_nothing_left_half_made(edge, clients):
    """Runs after the fuzzing (file order): every operation ended, no
    service, container or bundle left, every node schedulable."""
    for client in clients.values():
        stuck = [o for o in client.operations() if o["state"] not in ENDED]
        client.wait_all([o["id"] for o in stuck], timeout=120)
        assert client.services() == []
    assert all_containers(edge) == {ap: [] for ap in edge.net.aps}
    nodes = clients["admin"].nodes()
    assert sorted(n["name"] for n in nodes) == sorted(edge.net.aps)
    assert [n["name"] for n in nodes if not n["schedulable"]] == []
