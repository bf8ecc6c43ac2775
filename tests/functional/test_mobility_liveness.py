"""The cheap heartbeat path on the embedded edge: between two full reports
(HTTP), the node agents' liveness datagrams (UDP, signed with each node's
own credential) keep every node up, through the same emulated links the
HTTP heartbeats take."""
import datetime
import time

import pytest


@pytest.fixture
def listening(edge):
    """The manager restarted with ``[liveness] listen``; off again after."""
    edge.master_groups["liveness"] = {"listen": True}
    edge.restart_manager()
    edge._wait_nodes()
    yield
    edge.master_groups.pop("liveness")
    edge.restart_manager()
    edge._wait_nodes()


def test_liveness_datagrams_keep_nodes_up_between_full_reports(edge, admin, listening):
    ahead = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(ahead) < len(edge.net.aps):
        for node in admin.nodes():
            beat = datetime.datetime.fromisoformat(node["last_heartbeat"]).timestamp()
            reported = (node["report"] or {}).get("time")
            # The store's last heartbeat is past the time the node's last
            # full report was made: only a datagram can have moved it.
            if node["state"] == "up" and reported and beat - reported >= 3.0:
                ahead[node["name"]] = round(beat - reported, 1)
        time.sleep(0.5)
    assert sorted(ahead) == sorted(edge.net.aps), ahead
