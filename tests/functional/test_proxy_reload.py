"""An access point's HAProxy reload costs no request (regressions found by
test_chaos): a node agent restarted under load, and the reload another
service's create or delete causes on every access point."""
import json
import signal
import time

from mec_conpaas.edge import chaos
from tests.functional.conftest import Load
from tests.functional.conftest import wait_op


def clean_up(admin, load, *names):
    """Stop the client and delete what a test made even when it failed, so
    that the next tests start from an empty edge."""
    if load is not None and load.proc.poll() is None:
        load.stop()
    for name in names:
        if any(s["name"] == name for s in admin.services()):
            wait_op(admin, admin.delete_service(name), 120)


def test_agent_restart_costs_no_request(edge, admin):
    """A node agent restarted while its HAProxy serves a service: its first
    proxy push reloads HAProxy with the same backends the running worker
    has, so the reload looked finished at once and the servers were enabled
    on the outgoing worker; the new one answered 503 to every request until
    the next sweep (142 failures in 3 s for a client every 10 ms)."""
    load = None
    try:
        wait_op(admin, admin.create_service("web", "rst", node="ap-1"))
        port = admin.service("rst")["port"]
        load = Load(edge, "ap-2", port, interval=0.01)
        t_kill = time.monotonic()
        edge.kill("agent-ap-2", signal.SIGKILL)
        while edge._pid("agent-ap-2"):
            time.sleep(0.02)
        time.sleep(2)
        edge.start_node_agent("ap-2")
        t_back = time.monotonic()
        # Its first push comes with the sweep (every 3 s here), after it has
        # registered again.
        time.sleep(6)
        results = load.stop()
    finally:
        if not edge._pid("agent-ap-2"):
            edge.start_node_agent("ap-2")
        clean_up(admin, load, "rst")
    bad = [dict(r, since_kill=round(r["start"] - t_kill, 2),
                since_back=round(r["start"] - t_back, 2))
           for r in results if not r["ok"]]
    assert not bad, "%d of %d failed: %s" % (len(bad), len(results),
                                             json.dumps(bad[:3] + bad[-3:]))


def test_reload_costs_other_services_no_request(edge, admin):
    """Creating or deleting a service rewrites every access point's HAProxy
    config and reloads it; the new worker started with every server slot
    disabled until the node agent set them again, so the *other* services
    answered 503 for a moment."""
    load = None
    try:
        wait_op(admin, admin.create_service("web", "stay", node="ap-1"))
        port = admin.service("stay")["port"]
        # An open loop: 100 requests/s whatever the answers do (what a
        # half-core instance of the sample serves without queueing).
        load = Load(edge, "ap-1", port, interval=0.01)
        for _ in range(2):
            wait_op(admin, admin.create_service("web", "churn", node="ap-2"))
            wait_op(admin, admin.delete_service("churn"))
        results = load.stop()
    finally:
        clean_up(admin, load, "churn", "stay")
    bad = [r for r in results if not r["ok"]]
    assert not bad, "%d of %d failed: %s" % (len(bad), len(results),
                                             json.dumps(bad[:3]))


def wait_for(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.2)


def test_agent_restarted_after_every_service_went_frees_their_ports(edge, admin):
    """A node agent dead while the last service is deleted: its HAProxy
    keeps that service's frontend, and the restarted agent's first plan
    has no service, as the config it wrote at start.  Its HAProxy kept
    listening on the deleted service's port (test_chaos, CI), forwarding
    to an address that may be another tenant's instance by then."""
    assert admin.services() == [], "this test needs an edge with no service"
    try:
        wait_op(admin, admin.create_service("web", "gone", node="ap-1"))
        port = admin.service("gone")["port"]
        assert port in chaos.listening_ports(edge, "ap-3")
        edge.kill("agent-ap-3", signal.SIGKILL)
        # Seen down first: the delete then leaves ap-3 out of its pushes.
        wait_for("ap-3 seen down", lambda: any(
            n["name"] == "ap-3" and n["state"] != "up" for n in admin.nodes()), 30)
        wait_op(admin, admin.delete_service("gone"))
        assert port in chaos.listening_ports(edge, "ap-3")  # it could not be told
        edge.start_node_agent("ap-3")
        wait_for("ap-3 up again", lambda: any(
            n["name"] == "ap-3" and n["state"] == "up" for n in admin.nodes()), 30)
        # Its first plan comes with the sweep (every 3 s here).
        wait_for(lambda: "port %d of the deleted service still held on ap-3: %s" % (
            port, chaos.listening_ports(edge, "ap-3", owners=True)),
            lambda: port not in chaos.listening_ports(edge, "ap-3"), 15)
    finally:
        if not edge._pid("agent-ap-3"):
            edge.start_node_agent("ap-3")
        clean_up(admin, None, "gone")
