"""An access point's HAProxy reload costs no request (regressions found by
test_chaos): a node agent restarted under load, and the reload another
service's create or delete causes on every access point."""
import json
import signal
import time

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
