"""An admin drains a node holding another tenant's services: everything moves
off it make-before-break under load, the node is refused as a target until
enabled, and a drain that cannot complete changes nothing; remove-node.yml's
helper drains through the same call."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mec_conpaas.cli import client as client_mod
from mec_conpaas.edge import loadgen
from tests.functional.conftest import Load
from tests.functional.conftest import all_containers
from tests.functional.conftest import assert_no_failed_requests
from tests.functional.conftest import containers
from tests.functional.conftest import new_tenant
from tests.functional.conftest import wait_op

HELPER = os.path.join(os.path.dirname(__file__), "..", "..", "roles",
                      "openstack_controller", "files", "mec_drain_node.py")
DISABLED = ("node ap-1 is disabled (maintenance): choose another node or "
            "`mec-conpaas node enable ap-1`")


@pytest.fixture(scope="module")
def tenant(edge, admin):
    client = new_tenant(edge, "tenant-d")
    yield client
    for ap in edge.net.aps:
        admin.enable_node(ap)
    for svc in client.services():
        deadline = time.monotonic() + 120
        while client.service(svc["name"])["state"] not in ("RUNNING", "ERROR"):
            assert time.monotonic() < deadline, svc
            time.sleep(0.5)
        wait_op(client, client.delete_service(svc["name"]))
    assert all_containers(edge) == {ap: [] for ap in edge.net.aps}


def placement(client):
    """{service: (state, home, sorted nodes of its instances)}"""
    return {s["name"]: (s["state"], s["home_node"],
                        sorted(i["node"] for i in s["instances"]))
            for s in client.services()}


def running(edge):
    return sorted(i for ids in all_containers(edge).values() for i in ids)


def instance_ids(client):
    return sorted(i["id"] for s in client.services() for i in s["instances"])


def cli(edge, token, *args):
    env = dict(os.environ, MEC_CONPAAS_URL=edge.manager_url(), MEC_CONPAAS_TOKEN=token)
    return subprocess.run([edge._tool("mec-conpaas")] + list(args), env=env,
                          capture_output=True, text=True, timeout=300)


def test_drain_moves_another_tenants_instances_under_load(edge, admin, tenant):
    wait_op(tenant, tenant.create_service("web", "shop", node="ap-1", count=2))
    wait_op(tenant, tenant.create_service("web", "api", node="ap-2"))
    # A scaled-out instance whose home is elsewhere.
    wait_op(tenant, tenant.scale("api", 2, node="ap-1"))
    assert placement(tenant) == {"shop": ("RUNNING", "ap-1", ["ap-1", "ap-1"]),
                                 "api": ("RUNNING", "ap-2", ["ap-1", "ap-2"])}
    assert len(containers(edge, "ap-1")) == 3
    ports = {s["name"]: s["port"] for s in tenant.services()}
    loads = [Load(edge, "ap-1", ports["shop"], interval=0.01),
             Load(edge, "ap-1", ports["api"], interval=0.02)]
    try:
        time.sleep(0.5)
        res = cli(edge, admin.token, "node", "drain", "ap-1", "--reason", "maintenance",
                  "--no-wait", "-f", "json")
        assert res.returncode == 0, res.stderr
        ops = json.loads(res.stdout)
        assert sorted(o["service"] for o in ops) == ["api", "shop"]
        assert {(o["kind"], o["tenant"]) for o in ops} == {("drain", "tenant-d")}
        # The admin follows operations that belong to the tenant.
        ended = admin.wait_all([o["id"] for o in ops], 300)
        time.sleep(0.5)
    finally:
        results = [load.stop() for load in loads]
    assert [o["state"] for o in ended] == ["SUCCEEDED"] * 2, ended
    for r in results:
        summary = loadgen.summarize(r)
        assert summary["requests"] > 50, summary
        assert_no_failed_requests(summary)
    # Nearest to ap-1 first (ap-2 had two free slots), then ap-3.
    assert placement(tenant) == {"shop": ("RUNNING", "ap-2", ["ap-2", "ap-3"]),
                                 "api": ("RUNNING", "ap-2", ["ap-2", "ap-2"])}
    assert containers(edge, "ap-1") == []
    assert running(edge) == instance_ids(tenant)
    assert {o["id"] for o in tenant.operations() if o["kind"] == "drain"} == \
        {o["id"] for o in ops}
    node = admin.node("ap-1")
    assert (node["schedulable"], node["disabled_reason"]) == (False, "maintenance")
    # Draining it again is a no-op.
    res = admin.drain_node("ap-1")
    assert res["operations"] == [] and res["node"]["disabled_reason"] == "maintenance"


def test_drained_node_is_refused_until_enabled(edge, admin, tenant):
    for call in (lambda: tenant.create_service("web", "new", node="ap-1"),
                 lambda: tenant.scale("api", 3, node="ap-1"),
                 lambda: tenant.migrate("shop", "ap-1")):
        with pytest.raises(client_mod.ApiError) as e:
            call()
        assert (e.value.status, e.value.message) == (409, DISABLED)
    for path in ("/v1/nodes/ap-1/drain", "/v1/nodes/ap-1/enable"):
        with pytest.raises(client_mod.ApiError) as e:
            tenant.request("POST", path)
        assert (e.value.status, e.value.message) == (404, "no such API path")
    res = cli(edge, tenant.token, "node", "list", "-f", "json")
    assert res.returncode == 0, res.stderr
    assert {n["name"]: n["schedulable"] for n in json.loads(res.stdout)} == {
        "ap-1": False, "ap-2": True, "ap-3": True}
    res = cli(edge, admin.token, "node", "enable", "ap-1", "-f", "json")
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert (shown["schedulable"], shown["disabled_reason"]) == (True, None)
    wait_op(tenant, tenant.scale("api", 3, node="ap-1"))
    assert placement(tenant)["api"] == ("RUNNING", "ap-2", ["ap-1", "ap-2", "ap-2"])


def test_drain_that_cannot_complete_changes_nothing(edge, admin, tenant):
    # A service busy on the node: retry later.
    res = tenant.scale("api", 4, node="ap-1")
    with pytest.raises(client_mod.ApiError) as e:
        admin.drain_node("ap-1")
    assert e.value.status == 409
    assert "api (tenant tenant-d) is ADAPTING" in e.value.message
    assert "retry the drain when their operations end" in e.value.message
    assert admin.node("ap-1")["schedulable"] is True
    wait_op(tenant, res)
    wait_op(tenant, tenant.scale("shop", 3, node="ap-3"))
    # ap-2 holds 3 instances; ap-1 and ap-3 have one free slot each.
    before = (placement(tenant), running(edge), [o["id"] for o in tenant.operations()],
              [o["id"] for o in admin.operations()])
    res = cli(edge, admin.token, "node", "drain", "ap-2", "--reason", "full")
    assert res.returncode == 1
    assert "draining ap-2 needs 3 free instance slot(s) on the other up, schedulable " \
        "nodes but they have 2 (ap-1: 1 of 3 free; ap-3: 1 of 3 free)" in res.stderr \
        and "nothing was changed" in res.stderr
    node = admin.node("ap-2")
    assert (node["schedulable"], node["disabled_reason"]) == (True, None)
    assert (placement(tenant), running(edge), [o["id"] for o in tenant.operations()],
            [o["id"] for o in admin.operations()]) == before


def test_cli_drain_waits_for_every_operation(edge, admin, tenant):
    wait_op(tenant, tenant.scale("shop", 2))  # shop keeps one instance on ap-3
    # ap-1's two instances of api go to ap-3, the only node with room.
    res = cli(edge, admin.token, "node", "drain", "ap-1", "-f", "json")
    assert res.returncode == 0, res.stderr
    assert [(o["service"], o["tenant"], o["kind"], o["state"])
            for o in json.loads(res.stdout)] == [("api", "tenant-d", "drain", "SUCCEEDED")]
    assert placement(tenant) == {"shop": ("RUNNING", "ap-2", ["ap-2", "ap-3"]),
                                 "api": ("RUNNING", "ap-2", ["ap-2", "ap-2", "ap-3",
                                                             "ap-3"])}
    assert containers(edge, "ap-1") == []
    assert running(edge) == instance_ids(tenant)


# nova as remove-node's helper sees it (no OpenStack here): no compute service, and the
# servers on the node are each call's answer in turn from the JSON file NOVA_SERVERS
# names (the last one repeats; none: no server).
NOVA_STUB = """
import json, os, types

class _Compute:
    def services(self, **kw):
        return []

    def servers(self, **kw):
        path = os.environ.get("NOVA_SERVERS")
        if not path:
            return []
        with open(path) as f:
            answers = json.load(f)
        with open(path, "w") as f:
            json.dump(answers[1:] or answers, f)
        return [types.SimpleNamespace(**s) for s in answers[0]]

def connect():
    return types.SimpleNamespace(compute=_Compute())
"""


def test_remove_node_helper_drains_and_is_idempotent(edge, admin, tenant, tmp_path):
    """roles/openstack_controller/files/mec_drain_node.py against the real
    manager, nova stubbed out (no OpenStack here)."""
    (tmp_path / "openstack.py").write_text(NOVA_STUB)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    argv = [sys.executable, HELPER, "ap-3", edge.manager_url(), edge.path("admin-token")]

    def helper(servers=None, rc=0):
        if servers is not None:
            (tmp_path / "servers.json").write_text(json.dumps(servers))
            env["NOVA_SERVERS"] = str(tmp_path / "servers.json")
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == rc, res.stderr
        return json.loads(res.stdout.splitlines()[-1]) if rc == 0 else res.stderr

    # ap-3 holds three instances (api's two, shop's one); ap-1 has room.
    admin.enable_node("ap-1")
    assert helper() == {"changed": ["MEC-ConPaaS node ap-3 disabled",
                                    "service api of tenant tenant-d moved off ap-3",
                                    "service shop of tenant tenant-d moved off ap-3"]}
    assert containers(edge, "ap-3") == [] and len(containers(edge, "ap-1")) == 3
    assert running(edge) == instance_ids(tenant)
    assert helper() == {"changed": []}
    assert admin.node("ap-3")["schedulable"] is False
    # A server of MEC-ConPaaS's still on the node (a delete's the node missed, being
    # removed by the sweep the drain started): waited for.
    ours = {"name": "mec-x", "status": "ACTIVE", "task_state": "deleting",
            "metadata": {"mec_instance_id": "x", "mec_service_id": "y"}}
    assert helper([[ours], [dict(ours, task_state=None)], []]) == {"changed": [
        "MEC-ConPaaS's leftover mec-x on ap-3 removed (the manager's sweep)"]}
    assert json.loads((tmp_path / "servers.json").read_text()) == [[]]
    # Anyone else's: the operator's to deal with, said at once.
    foreign = {"name": "db-1", "status": "SHUTOFF", "task_state": None, "metadata": {}}
    err = helper([[ours, foreign]], rc=1)
    assert ("instances still on ap-3 (not managed by MEC-ConPaaS): db-1 (SHUTOFF); "
            "delete or move them, then rerun") in err


def wait_for(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_drain_names_what_a_delete_left_and_the_sweep_removes_it(edge, admin, tenant):
    """A service deleted while its node's agent is down leaves its instance to
    the sweep (DELETING, no service): a drain of that node has nothing to
    move, names it (``leftovers``; the CLI says so), and the sweep removes it
    once the node is back."""
    admin.enable_node("ap-3")
    wait_op(tenant, tenant.create_service("web", "gone", node="ap-3"))
    (iid,) = [i["id"] for i in tenant.service("gone")["instances"]]
    assert containers(edge, "ap-3") == [iid]
    edge.kill("agent-ap-3", signal.SIGKILL)
    try:
        wait_for("ap-3 marked down", lambda: admin.node("ap-3")["state"] == "down")
        wait_op(tenant, tenant.delete_service("gone"))
        res = cli(edge, admin.token, "node", "drain", "ap-3", "-f", "json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == []
        assert ("1 instance(s) no operation accounts for, left there for the sweep: %s"
                % iid) in res.stderr
        assert containers(edge, "ap-3") == [iid]  # its node could not remove it
    finally:
        edge.start_node_agent("ap-3")
    # (container first, then its row: a drain's answer may name it for a moment longer)
    wait_for("the leftover removed", lambda: containers(edge, "ap-3") == []
             and admin.drain_node("ap-3")["leftovers"] == [])
    assert running(edge) == instance_ids(tenant)
