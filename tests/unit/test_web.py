"""/metrics and the dashboard's JSON view on a real store and the real
engine (no containers: the workflows here only journal)."""
import glob
import http.client
import json
import math
import os
import re

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import metrics
from tests.unit.test_api_nodes import add_service
from tests.unit.test_api_nodes import edge  # noqa: F401  (fixture)
from tests.unit.test_node_http import node  # noqa: F401  (fixture)
from tests.unit.test_node_http import request
from tests.unit.test_operations import engine  # noqa: F401  (fixture)
from tests.unit.test_operations import held_op
from tests.unit.test_operations import wait_ended

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def samples(text):
    """{(name, sorted labels): value} of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def scrape(api):
    resp = api.client.get("/metrics", headers={"Authorization": "Bearer " + api.token})
    assert resp.status_code == 200, resp.data
    assert resp.content_type.startswith("text/plain")
    return samples(resp.get_data(as_text=True))


class Migrating:
    """A workflow that journals a critical window, as migrate does."""

    def run(self, ctx):
        ctx.record(windows=[{"freeze_to_switch": 42.0}, {"freeze_to_switch": 640.0}])

    def rollback(self, ctx, message):
        pass


def test_metrics_need_an_admin_token(edge):  # noqa: F811
    admin, alice, _ = edge
    client = admin.client
    assert client.get("/metrics").status_code == 401
    resp = client.get("/metrics", headers={"Authorization": "Bearer " + alice.token})
    assert resp.status_code == 404  # as an unknown path, to a tenant
    add_service("web", "alice", "ap-1", ["ap-1", "ap-2"])
    got = scrape(admin)
    assert got[("mec_conpaas_node_instance_slots", (("node", "ap-1"),))] == 3
    assert got[("mec_conpaas_node_instances", (("node", "ap-1"),))] == 1
    assert got[("mec_conpaas_node_instances", (("node", "ap-3"),))] == 0
    assert got[("mec_conpaas_services", (("state", "RUNNING"),))] == 1
    assert got[("mec_conpaas_node_heartbeat_age_seconds", (("node", "ap-2"),))] >= 0


def test_operations_and_windows_are_counted_when_they_end(edge, engine):  # noqa: F811
    admin, _, _ = edge
    labels = (("kind", "migrate"), ("result", "succeeded"))
    before = scrape(admin)
    eng = engine({"migrate": Migrating()})
    op_id = held_op(add_service("web", "alice", "ap-1", ["ap-1"]), kind="migrate")
    eng.submit(op_id)
    wait_ended(op_id)
    after = scrape(admin)

    def delta(name, lbl):
        return after.get((name, lbl), 0) - before.get((name, lbl), 0)
    assert delta("mec_conpaas_operations_total", labels) == 1
    assert delta("mec_conpaas_operation_duration_seconds_count", labels) == 1
    window = (("kind", "migrate"),)
    assert delta("mec_conpaas_migration_freeze_to_switch_seconds_count", window) == 2
    assert delta("mec_conpaas_migration_freeze_to_switch_seconds_sum", window) == \
        (42.0 + 640.0) / 1000
    # Buckets from the histogram's own bounds: 42 ms is under 0.05 s, 640 ms not.
    assert delta("mec_conpaas_migration_freeze_to_switch_seconds_bucket",
                 window + (("le", "0.05"),)) == 1
    assert delta("mec_conpaas_migration_freeze_to_switch_seconds_bucket",
                 window + (("le", "0.75"),)) == 2
    assert 0.05 in metrics.FREEZE_TO_SWITCH._upper_bounds


def test_dashboard_view_shows_a_tenant_only_its_own(edge):  # noqa: F811
    admin, alice, _ = edge
    add_service("web", "alice", "ap-1", ["ap-1"])
    add_service("own", "admin", "ap-3", ["ap-3"], port=20020)
    status, mine = alice("GET", "/dashboard/state")
    assert status == 200
    assert [s["name"] for s in mine["services"]] == ["web"]
    assert [n["name"] for n in mine["nodes"]] == ["ap-1", "ap-2", "ap-3"]
    assert {(link["a"], link["b"]) for link in mine["links"]} == {
        ("ap-1", "ap-2"), ("ap-2", "ap-3")}
    status, everything = admin("GET", "/dashboard/state")
    assert sorted((s["name"], s["tenant"], s["own"]) for s in everything["services"]) \
        == [("own", "admin", True), ("web", "alice", False)]
    assert alice.client.get("/dashboard/state").status_code == 401
    page = alice.client.get("/dashboard")
    assert page.status_code == 200 and b"dashboard.js" in page.data
    # Every asset the page names is served from the package.
    for asset in ("dashboard.js", "dashboard.css"):
        assert alice.client.get("/dashboard/static/" + asset).status_code == 200
    # PaaS tokens here: the page asks for one, and has no keystone sign-in.
    assert alice.client.get("/dashboard/login-methods").json == {"methods": ["token"]}
    r = alice.client.post("/dashboard/keystone-login", json={
        "username": "alice", "password": "x", "project": "p"})
    assert r.status_code == 404 and "paste your token" in r.json["error"]["message"]


def report_users(stations, used):
    """Node reports as the agents send them: ``stations`` {ap: [(user,
    address)]}, ``used`` {service id: {ap: [address]}} (HAProxy's stick
    tables)."""
    with session_scope() as s:
        for node in s.scalars(select(models.Node)):
            report = {"stations": [
                {"mac": "02:00:00:00:01:%02d" % k, "user": user, "address": addr,
                 "signal": None, "since": 1000.0 + k}
                for k, (user, addr) in enumerate(stations.get(node.name, ()))]}
            report["services"] = {sid: {"users": {a: 1.0 for a in at.get(node.name, ())}}
                                  for sid, at in used.items()}
            node.report = report
            node.last_heartbeat = models.utcnow()


def test_dashboard_users_per_ap_names_to_admins_counts_of_own_to_tenants(edge):  # noqa: F811
    admin, alice, _ = edge
    web = add_service("web", "alice", "ap-1", ["ap-1"])
    other = add_service("web", "admin", "ap-2", ["ap-2"], port=20020)
    # walker and runner use alice's service, sitter the admin's; cl-1 nothing.
    report_users({"ap-1": [("cl-1", "10.0.1.2"), ("walker", "10.0.1.10")],
                  "ap-2": [("runner", "10.0.2.10"), ("sitter", "10.0.2.11")]},
                 {web: {"ap-1": ["10.0.1.10"], "ap-2": ["10.0.2.10"]},
                  other: {"ap-2": ["10.0.2.11"]}})

    def users(api):
        status, view = api("GET", "/dashboard/state")
        assert status == 200
        return {n["name"]: n["users"] for n in view["nodes"]}
    seen = users(admin)
    assert {ap: (u["count"], [x["name"] for x in u["users"]]) for ap, u in seen.items()} \
        == {"ap-1": (2, ["cl-1", "walker"]), "ap-2": (2, ["runner", "sitter"]),
            "ap-3": (0, [])}
    assert seen["ap-2"]["users"][0]["services"] == ["web"]
    # alice: how many of her services' users, no names, none of sitter.
    assert users(alice) == {"ap-1": {"count": 1, "users": None},
                            "ap-2": {"count": 1, "users": None},
                            "ap-3": {"count": 0, "users": None}}
    status, view = alice("GET", "/dashboard/state")
    text = json.dumps(view)
    assert not any(name in text for name in ("walker", "runner", "sitter", "cl-1"))
    # walker moves to ap-3 (a new address there, still using alice's service).
    report_users({"ap-1": [("cl-1", "10.0.1.2")],
                  "ap-2": [("runner", "10.0.2.10"), ("sitter", "10.0.2.11")],
                  "ap-3": [("walker", "10.0.3.10")]},
                 {web: {"ap-2": ["10.0.2.10"], "ap-3": ["10.0.3.10"]},
                  other: {"ap-2": ["10.0.2.11"]}})
    assert [x["name"] for x in users(admin)["ap-3"]["users"]] == ["walker"]
    assert users(admin)["ap-3"]["users"][0]["previous"] == "ap-1"
    assert {ap: u["count"] for ap, u in users(alice).items()} == {
        "ap-1": 0, "ap-2": 1, "ap-3": 1}


def test_event_stream_sends_the_view(edge):  # noqa: F811
    _, alice, manager = edge
    import threading
    manager.stop = threading.Event()
    add_service("web", "alice", "ap-1", ["ap-1"])
    resp = alice.client.get("/dashboard/events", buffered=False, headers={
        "Authorization": "Bearer " + alice.token})
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    text = ""
    for chunk in resp.response:
        text += chunk.decode() if isinstance(chunk, bytes) else chunk
        if "event: state" in text and text.endswith("\n\n"):
            break
    manager.stop.set()
    resp.close()
    data = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert [s["name"] for s in json.loads(data[0])["services"]] == ["web"]


def test_event_streams_leave_the_api_half_of_its_threads(edge):  # noqa: F811
    _, alice, manager = edge
    import threading
    manager.stop = threading.Event()
    auth = {"Authorization": "Bearer " + alice.token}
    limit = manager.conf.api.threads // 2
    open_ = [alice.client.get("/dashboard/events", buffered=False, headers=auth)
             for _ in range(limit)]
    assert {r.status_code for r in open_} == {200}
    refused = alice.client.get("/dashboard/events", buffered=False, headers=auth)
    assert refused.status_code == 503
    assert "[api] threads" in refused.get_json()["error"]["message"]
    open_.pop().close()  # a page went away: its slot is free again
    again = alice.client.get("/dashboard/events", buffered=False, headers=auth)
    assert again.status_code == 200
    for r in open_ + [again]:
        r.close()
    # The REST API still answers meanwhile.
    assert alice("GET", "/v1/services")[0] == 200


def test_node_agent_metrics_take_only_its_token(node):  # noqa: F811
    agent, port = node
    resp, _ = request(port, "GET", "/metrics")
    assert resp.status == 401
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics", headers={"Authorization": "Bearer " + agent.token})
    conn_resp = conn.getresponse()
    text = conn_resp.read().decode()
    conn.close()
    assert conn_resp.status == 200
    assert conn_resp.getheader("Content-Type").startswith("text/plain")
    got = samples(text)
    assert got[("mec_conpaas_proxy_up", ())] == 0  # no HAProxy runs here
    assert math.isinf(got[("mec_conpaas_node_heartbeat_age_seconds", ())])
    assert got[("mec_conpaas_node_memory_total_bytes", ())] == \
        agent.reporter.memory()["total_bytes"]


def exported():
    """Metric names the code defines (PREFIX + "name", its gauge helper, or
    a table of families: ``"name": (...)``)."""
    names = set()
    for path in ("mec_conpaas/manager/metrics.py", "mec_conpaas/agents/node/metrics.py"):
        with open(os.path.join(ROOT, path)) as f:
            names |= {"mec_conpaas_" + (a or b) for a, b in re.findall(
                r'(?:PREFIX \+\s*|gauge\()\s*"(\w+)"|^\s*"(\w+)": \(', f.read(),
                re.MULTILINE)}
    return names


def test_docs_name_only_exported_metrics():
    names = exported()
    assert {"mec_conpaas_proxy_requests", "mec_conpaas_node_up",
            "mec_conpaas_node_load1"} <= names
    used = set()
    for path in glob.glob(os.path.join(ROOT, "docs", "monitoring", "*")):
        with open(path) as f:
            text = f.read()
        if path.endswith(".json"):
            json.loads(text)  # Grafana imports it
        used |= set(re.findall(r"mec_conpaas_\w+", text))
    with open(os.path.join(ROOT, "docs", "monitoring.rst")) as f:
        used |= {"mec_conpaas_" + n for n in re.findall(
            r"``((?:node|proxy|operation|migration|services)\w*)", f.read())
            if not n.endswith("_") and ("_" in n or n == "services")}
    assert len(used) > 20
    base = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert base - names == set()
