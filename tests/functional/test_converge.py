"""Operations converge on a real edge: one at a time per service, a scale-in
resumed after SIGKILL finishes its removals, a dead node agent wedges
nothing, an admin's force delete forgets what it cannot reach and the sweep
removes it when the node is back."""
import os
import signal
import subprocess
import time

import pytest

from mec_conpaas.cli import client as client_mod
from tests.functional.conftest import all_containers
from tests.functional.conftest import wait_op


def ids(svc, *states):
    return sorted(i["id"] for i in svc["instances"] if i["state"] in states)


def running(edge):
    return sorted(i for v in all_containers(edge).values() for i in v)


def wait_for(what, predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_delete_during_create_then_sigkill_during_scale_in(edge, admin):
    res = admin.create_service("web", "conv", node="ap-1", count=2)
    create = res["operation"]["id"]
    with pytest.raises(client_mod.ApiError) as e:
        admin.delete_service("conv")
    assert e.value.status == 409
    assert "busy with operation %s (create, " % create in e.value.message
    wait_op(admin, res)
    op_id = admin.scale("conv", 1)["operation"]["id"]
    # Kill the manager once the victim is out of service (DELETING).
    deadline = time.monotonic() + 30
    while not ids(admin.service("conv"), "DELETING"):
        assert time.monotonic() < deadline, "scale-in never marked an instance"
        time.sleep(0.02)
    edge.kill("manager", signal.SIGKILL)
    while edge._pid("manager"):
        time.sleep(0.05)
    edge.start_manager()
    op = admin.wait(op_id, 120)
    assert (op["state"], op["attempts"]) == ("SUCCEEDED", 2), op
    svc = admin.service("conv")
    assert svc["state"] == "RUNNING" and svc["operation"] is None
    assert len(svc["instances"]) == 1 and ids(svc, "ACTIVE")
    assert running(edge) == ids(svc, "ACTIVE")


def test_scale_in_with_a_dead_node_agent_and_force_delete(edge, admin):
    wait_op(admin, admin.scale("conv", 2, node="ap-2"))
    on_ap2 = [i["id"] for i in admin.service("conv")["instances"]
              if i["node"] == "ap-2"]
    edge.kill("agent-ap-2", signal.SIGKILL)
    try:
        wait_for("ap-2 marked down", lambda: admin.node("ap-2")["state"] == "down")
        # The farthest from home (ap-1) goes: the one on the dead node.
        op = admin.wait(admin.scale("conv", 1)["operation"]["id"], 120)
        assert op["state"] == "SUCCEEDED", op
        assert op["step"] == "done; on a down node, removed when it is back: " \
            "%s@ap-2" % on_ap2[0]
        svc = admin.service("conv")
        assert svc["state"] == "RUNNING" and svc["operation"] is None
        assert ids(svc, "DELETING") == on_ap2  # its slot stays counted
        # Not wedged: the next call is accepted and runs.
        wait_op(admin, admin.scale("conv", 2))
        assert "ap-2" not in [i["node"] for i in admin.service("conv")["instances"]
                              if i["state"] == "ACTIVE"]
        env = dict(os.environ, MEC_CONPAAS_URL=edge.manager_url(),
                   MEC_CONPAAS_TOKEN=admin.token)
        res = subprocess.run([edge._tool("mec-conpaas"), "service", "delete", "conv",
                              "--force", "-f", "json"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert admin.services() == []
        # The dead node's container is still there, forgotten.
        assert all_containers(edge)["ap-2"] == on_ap2
    finally:
        edge.start_node_agent("ap-2")
    wait_for("ap-2 back", lambda: admin.node("ap-2")["state"] == "up")
    wait_for("the sweep to remove the stale container",
             lambda: running(edge) == [], timeout=30)
