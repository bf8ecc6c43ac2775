"""Service lifecycle on a real embedded edge: create, scale, migrate under
load, crash recovery, node failure, tenants, the CLI."""
import json
import os
import signal
import subprocess
import time

import pytest

from mec_conpaas.cli import client as client_mod
from mec_conpaas.edge import loadgen
from tests.functional.conftest import Load
from tests.functional.conftest import all_containers
from tests.functional.conftest import client_get
from tests.functional.conftest import new_tenant
from tests.functional.conftest import wait_op


def instance_ids(svc, state="ACTIVE"):
    return sorted(i["id"] for i in svc["instances"] if i["state"] == state)


def running_ids(edge):
    return sorted(i for ids in all_containers(edge).values() for i in ids)


def test_edge_is_up_with_latency_shaping(edge, admin):
    nodes = admin.nodes()
    assert sorted(n["name"] for n in nodes) == ["ap-1", "ap-2", "ap-3"]
    assert all(n["state"] == "up" for n in nodes)
    report = admin.node("ap-1")["report"]
    for key in ("cpu_percent", "memory", "disk", "load", "containers"):
        assert key in report
    status = edge.status()
    shaping = status["latency_shaping"]
    assert shaping["active"], shaping
    # ap-3 is three links (1 + 2 + 2 ms one way) from the master.
    assert shaping["master_to_ap_rtt"]["ap-3"]["measured_ms"] >= 9.0
    # Probes go only where the edge's own link leads.
    assert edge.net.routed_locally(edge.net.bridge_address("ap-3"))
    assert not edge.net.routed_locally("10.99.99.1")


def test_create_web_service_answers_through_ap1(edge, admin):
    res = admin.create_service("web", "shop", node="ap-1")
    assert res["operation"]["state"] in ("PENDING", "RUNNING")
    wait_op(admin, res)
    svc = admin.service("shop")
    assert svc["state"] == "RUNNING"
    assert [i["node"] for i in svc["instances"]] == ["ap-1"]
    got = client_get(edge, "ap-1", svc["port"])
    assert got["status"] == 200
    assert json.loads(got["body"])["instance"] == svc["instances"][0]["address"]
    assert running_ids(edge) == instance_ids(svc)
    # Every access point exposes the same stable endpoint.
    for ap in ("ap-2", "ap-3"):
        assert client_get(edge, ap, svc["port"])["status"] == 200


def test_scale_to_two(edge, admin):
    wait_op(admin, admin.scale("shop", 2))
    svc = admin.service("shop")
    assert len(instance_ids(svc)) == 2
    assert running_ids(edge) == instance_ids(svc)
    # Least loaded among the nearest: ap-1 is home and has room.
    assert [i["node"] for i in svc["instances"]] == ["ap-1", "ap-1"]
    served = {json.loads(client_get(edge, "ap-1", svc["port"])["body"])["instance"]
              for _ in range(6)}
    assert served == {i["address"] for i in svc["instances"]}
    # Placement on a named access point; scale-in removes the farthest.
    wait_op(admin, admin.scale("shop", 3, node="ap-2"))
    svc = admin.service("shop")
    assert sorted(i["node"] for i in svc["instances"]) == ["ap-1", "ap-1", "ap-2"]
    assert running_ids(edge) == instance_ids(svc)
    wait_op(admin, admin.scale("shop", 1))
    svc = admin.service("shop")
    assert len(instance_ids(svc)) == 1
    assert [i["node"] for i in svc["instances"]] == ["ap-1"]
    assert running_ids(edge) == instance_ids(svc)


def test_migrate_under_load_loses_no_request_and_keeps_state(edge, admin):
    svc = admin.service("shop")
    port = svc["port"]
    before = json.loads(client_get(edge, "ap-1", port)["body"])["hits"]
    # A user starting a request every 10 ms whatever the earlier ones are
    # doing, a connection per request (test_stateful's user keeps its
    # connections alive, as a browser does, across ten migrations).
    loads = {"per-request": Load(edge, "ap-1", port, interval=0.01)}
    try:
        time.sleep(0.5)
        wait_op(admin, admin.migrate("shop", "ap-3"))
        time.sleep(0.5)
    finally:
        results = {k: load.stop() for k, load in loads.items()}
    for kind, res in results.items():
        summary = loadgen.summarize(res)
        assert summary["requests"] > 50, (kind, summary)
        assert summary["failed"] == 0, (kind, summary)
    hits = sorted(r["hits"] for res in results.values() for r in res)
    # The counter lives in the state directory: it must keep counting
    # across the move, every request counted exactly once.
    assert hits == list(range(before + 1, before + 1 + len(hits))), hits
    svc = admin.service("shop")
    assert svc["home_node"] == "ap-3"
    assert [i["node"] for i in svc["instances"]] == ["ap-3"]
    for res in results.values():
        assert {r["instance"] for r in res[-5:]} == {svc["instances"][0]["address"]}
    assert running_ids(edge) == instance_ids(svc)


def test_migrate_to_same_node_is_refused(admin):
    with pytest.raises(client_mod.ApiError) as e:
        admin.migrate("shop", "ap-3")
    assert e.value.status == 409 and "already on ap-3" in e.value.message
    assert admin.service("shop")["state"] == "RUNNING"


def test_manager_sigkill_mid_scale_recovers(edge, admin):
    before = running_ids(edge)
    res = admin.scale("shop", 3)
    op_id = res["operation"]["id"]
    # Kill it once an instance is being built: the worst moment.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        svc = admin.service("shop")
        if any(i["state"] == "BUILDING" for i in svc["instances"]):
            break
        time.sleep(0.02)
    else:
        pytest.fail("scale never started building an instance")
    pid = edge._pid("manager")
    os.kill(pid, signal.SIGKILL)
    while edge._pid("manager"):
        time.sleep(0.05)
    edge.start_manager()
    op = admin.wait(op_id, 180)
    assert op["state"] == "SUCCEEDED", op
    assert op["attempts"] == 2
    svc = admin.service("shop")
    assert svc["state"] == "RUNNING"
    assert len(instance_ids(svc)) == 3
    assert not [i for i in svc["instances"] if i["state"] != "ACTIVE"]
    # No orphan: exactly the instances the store knows are running.
    deadline = time.monotonic() + 30
    while running_ids(edge) != instance_ids(svc) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert running_ids(edge) == instance_ids(svc)
    assert set(before) <= set(running_ids(edge))
    assert client_get(edge, "ap-3", svc["port"])["status"] == 200
    wait_op(admin, admin.scale("shop", 1))


def test_tenants_cannot_see_each_other(edge, admin):
    other = new_tenant(edge, "tenant-b")
    assert [s["name"] for s in other.services()] == []
    for call in (lambda: other.service("shop"), lambda: other.delete_service("shop"),
                 lambda: other.scale("shop", 2), lambda: other.migrate("shop", "ap-1")):
        with pytest.raises(client_mod.ApiError) as e:
            call()
        assert e.value.status == 404
    # Nodes are shared and readable.
    assert len(other.nodes()) == 3
    # Same name in another tenant is fine and separate.
    wait_op(other, other.create_service("web", "shop", node="ap-2"))
    assert len(admin.services()) == 1 and len(other.services()) == 1
    wait_op(other, other.delete_service("shop"))
    with pytest.raises(client_mod.ApiError) as e:
        client_mod.Client(edge.manager_url(), "not-a-token").services()
    assert e.value.status == 401


def test_cli_formats_and_progress(edge, admin):
    env = dict(os.environ, MEC_CONPAAS_URL=edge.manager_url(),
               MEC_CONPAAS_TOKEN=admin.token)
    cli = [edge._tool("mec-conpaas")]

    def run(*args):
        res = subprocess.run(cli + list(args), env=env, capture_output=True,
                             text=True, timeout=300)
        return res

    res = run("node", "list", "-f", "json")
    assert res.returncode == 0, res.stderr
    assert sorted(n["name"] for n in json.loads(res.stdout)) == ["ap-1", "ap-2", "ap-3"]
    res = run("service", "show", "shop", "-f", "yaml")
    assert "state: RUNNING" in res.stdout
    res = run("service", "list", "-f", "value", "-c", "name")
    assert res.stdout.split() == ["shop"]
    res = run("service", "create", "web", "cli-svc", "--node", "ap-2", "-f", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["state"] == "RUNNING"
    res = run("service", "scale", "cli-svc", "--count", "2", "--no-wait", "-f", "json")
    op = json.loads(res.stdout)
    assert op["kind"] == "scale" and op["state"] in ("PENDING", "RUNNING")
    res = run("operation", "show", op["id"], "-f", "json")
    assert json.loads(res.stdout)["id"] == op["id"]
    admin.wait(op["id"])
    res = run("service", "logs", "cli-svc", "-f", "json")
    assert res.returncode == 0 and len(json.loads(res.stdout)) == 2
    res = run("service", "delete", "cli-svc")
    assert res.returncode == 0, res.stderr
    res = run("service", "show", "cli-svc")
    assert res.returncode == 1 and "no service named 'cli-svc'" in res.stderr
    res = run("service", "migrate", "shop", "--to", "ap-9")
    assert res.returncode == 1 and "no node named 'ap-9'" in res.stderr


def test_node_down_is_shown_and_refused_as_target(edge, admin):
    edge.kill("agent-ap-2", signal.SIGKILL)
    deadline = time.monotonic() + 30
    while admin.node("ap-2")["state"] != "down":
        assert time.monotonic() < deadline, "ap-2 never marked down"
        time.sleep(0.5)
    with pytest.raises(client_mod.ApiError) as e:
        admin.migrate("shop", "ap-2")
    assert e.value.status == 409 and "down" in e.value.message
    assert admin.service("shop")["state"] == "RUNNING"
    edge.start_node_agent("ap-2")
    deadline = time.monotonic() + 30
    while admin.node("ap-2")["state"] != "up":
        assert time.monotonic() < deadline, "ap-2 never came back"
        time.sleep(0.5)


def test_delete_removes_everything(edge, admin):
    wait_op(admin, admin.delete_service("shop"))
    assert admin.services() == []
    assert running_ids(edge) == []
