"""Users that move, and services that follow them (issue 12, part 1).

One emulated user at a time walks between the access points of the test
edge while it sends requests to its current AP's endpoint; the manager's
mobility loop runs with a short dwell time so that each test takes
seconds.  Every policy operation must carry its reason."""
import time

import pytest

from mec_conpaas.edge import loadgen
from mec_conpaas.edge import traces
from mec_conpaas.edge import users as users_mod
from tests.functional.conftest import Load
from tests.functional.conftest import wait_op

BASE = {"interval": 0.5, "min_dwell": 2.0, "min_gain": 0.2}


@pytest.fixture
def mobility(edge):
    """The manager restarted with the policies a test asks for; every user
    it made removed and the policies off again afterwards."""
    users = users_mod.for_edge(edge)

    def enable(**opts):
        edge.restart_manager(policies=dict(BASE, **opts))
        return users
    yield enable
    for u in users.list():
        users.remove(u["user"])
    edge.restart_manager(policies={})


def until(what, predicate, timeout=60.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting for " + what)


def user_load(edge, users, user, port):
    return Load(edge, None, port, netns=users.netns(user),
                url="http://%s:%d/" % (edge.net.user_endpoint(), port))


def uses(admin, user, service):
    return any(u["name"] == user and service in u["services"]
               for u in admin.request("GET", "/v1/users")["users"])


def policy_ops(admin, service, kind=None):
    return [o for o in admin.operations() if o["service"] == service
            and (o["params"] or {}).get("reason") and kind in (None, o["kind"])]


def test_service_follows_its_user_with_no_failed_request(edge, admin, mobility):
    users = mobility(follow_the_user=True)
    svc = wait_op(admin, admin.create_service("web", "follow", node="ap-1"))
    port = admin.service("follow")["port"]
    try:
        users.attach("walker", "ap-1")
        load = user_load(edge, users, "walker", port)
        try:
            until("the manager to see walker use the service",
                  lambda: uses(admin, "walker", "follow"), timeout=20)
            assert admin.service("follow")["home_node"] == "ap-1"
            users.attach("walker", "ap-2")  # the handover
            until("the service to follow to ap-2", lambda: (
                admin.service("follow")["home_node"] == "ap-2"
                and admin.service("follow")["state"] == "RUNNING"))
            time.sleep(1)
        finally:
            summary = loadgen.summarize(load.stop())
        assert summary["failed"] == 0, summary
        ops = policy_ops(admin, "follow", "migrate")
        assert len(ops) == 1 and ops[0]["state"] == "SUCCEEDED", ops
        assert ops[0]["params"]["reason"].startswith("follow-the-user: 1 user(s) at ap-2")
        assert [i["node"] for i in admin.service("follow")["instances"]] == ["ap-2"]
        assert svc  # created under the policy like any service
    finally:
        wait_op(admin, admin.delete_service("follow"))


def test_oscillating_user_moves_the_service_at_most_once_per_handover(
        edge, admin, mobility):
    users = mobility(follow_the_user=True)
    wait_op(admin, admin.create_service("web", "pingpong", node="ap-1"))
    port = admin.service("pingpong")["port"]
    try:
        users.attach("dancer", "ap-1")
        load = user_load(edge, users, "dancer", port)
        try:
            until("the manager to see dancer use the service",
                  lambda: uses(admin, "dancer", "pingpong"), timeout=20)
            # Flipping between ap-1 and ap-2 every second for 8 s (faster
            # than the 2 s dwell), then staying at ap-2.
            rows = ["%g,dancer,%s\n" % (t, "ap-2" if t % 2 else "ap-1")
                    for t in range(1, 9)] + ["9,dancer,ap-2\n"]
            steps = traces.parse(rows, edge.net.aps)
            traces.replay(steps, users.attach, users.detach)
            handovers = len(steps) - 1
            until("the service to settle at ap-2", lambda: (
                admin.service("pingpong")["home_node"] == "ap-2"
                and admin.service("pingpong")["state"] == "RUNNING"))
            time.sleep(3)  # more rounds: nothing else happens
        finally:
            summary = loadgen.summarize(load.stop())
        migrations = policy_ops(admin, "pingpong", "migrate")
        assert 1 <= len(migrations) <= handovers
        assert len(migrations) == 1, [o["params"]["reason"] for o in migrations]
        assert summary["failed"] == 0, summary
    finally:
        wait_op(admin, admin.delete_service("pingpong"))


def test_standby_starts_before_the_move_and_goes_with_the_prediction(
        edge, admin, mobility):
    users = mobility(ahead_of_handover=True, handover_probability=0.5)
    wait_op(admin, admin.create_service("web", "ahead", node="ap-1"))
    port = admin.service("ahead")["port"]
    try:
        users.attach("runner", "ap-1")
        load = user_load(edge, users, "runner", port)
        try:
            # ap-1's only neighbour is ap-2: the standby goes there while
            # the user is still at ap-1.
            until("a standby on ap-2", lambda: sorted(
                (i["node"], i["state"]) for i in admin.service("ahead")["instances"])
                == [("ap-1", "ACTIVE"), ("ap-2", "ACTIVE")], timeout=60)
            assert users.where("runner") == "ap-1"
            ops = policy_ops(admin, "ahead", "scale")
            assert ops and ops[0]["params"]["reason"].startswith(
                "ahead-of-handover: user runner at ap-1 is likely"), ops
            assert ops[0]["params"]["node"] == "ap-2"
        finally:
            summary = loadgen.summarize(load.stop())
        assert summary["failed"] == 0, summary
        # The user leaves: nothing predicts ap-2 any more, the standby goes.
        users.detach("runner")
        until("the standby to go", lambda: [
            i["node"] for i in admin.service("ahead")["instances"]] == ["ap-1"]
            and admin.service("ahead")["state"] == "RUNNING", timeout=90)
        drops = [o for o in policy_ops(admin, "ahead", "scale")
                 if "no user is predicted" in o["params"]["reason"]]
        assert drops and drops[0]["state"] == "SUCCEEDED", drops
    finally:
        wait_op(admin, admin.delete_service("ahead"))
