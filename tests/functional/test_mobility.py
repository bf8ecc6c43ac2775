"""Users that move, and services that follow them (issue 12, part 1).

One emulated user at a time walks between the access points of the test
edge while it sends requests to its current AP's endpoint; the manager's
mobility loop runs with a short dwell time so that each test takes
seconds.  Every policy operation must carry its reason."""
import contextlib
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
        edge._wait_nodes()  # heartbeats missed while it was away
        return users
    yield enable
    for u in users.list():
        users.remove(u["user"])
    edge.restart_manager(policies={})
    edge._wait_nodes()


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


@contextlib.contextmanager
def walking(edge, admin, users, service, user):
    """A web service on ap-1 and ``user`` at ap-1 using it (seen by the
    manager); yields a dict that gets the load's ``results`` and
    ``summary`` at the end; the service is deleted afterwards."""
    wait_op(admin, admin.create_service("web", service, node="ap-1"))
    out = {}
    try:
        users.attach(user, "ap-1")
        load = user_load(edge, users, user, admin.service(service)["port"])
        try:
            until("the manager to see %s use %s" % (user, service),
                  lambda: uses(admin, user, service), timeout=20)
            yield out
        finally:
            out["results"] = load.stop()
            out["summary"] = loadgen.summarize(out["results"])
    finally:
        wait_op(admin, admin.delete_service(service))


def standby_up(admin, service):
    """Wait for the ahead-of-handover standby on ap-2 beside the home."""
    until("a standby on ap-2", lambda: sorted(
        (i["node"], i["state"]) for i in admin.service(service)["instances"])
        == [("ap-1", "ACTIVE"), ("ap-2", "ACTIVE")], timeout=60)


def standby_dropped(admin, users, user, service):
    """``user`` leaves: nothing predicts ap-2 any more, the standby goes;
    returns the policy's drop operations."""
    users.detach(user)
    until("the standby to go", lambda: [
        i["node"] for i in admin.service(service)["instances"]] == ["ap-1"]
        and admin.service(service)["state"] == "RUNNING", timeout=90)
    return [o for o in policy_ops(admin, service, "scale")
            if "no user is predicted" in o["params"]["reason"]]


def settled_at(admin, service, ap):
    svc = admin.service(service)
    return svc["home_node"] == ap and svc["state"] == "RUNNING" and svc


def test_service_follows_its_user_with_no_failed_request(edge, admin, mobility):
    users = mobility(follow_the_user=True)
    with walking(edge, admin, users, "follow", "walker") as run:
        assert admin.service("follow")["home_node"] == "ap-1"
        # The handover, asked of the manager (mec-conpaas user move): ap-2's
        # node agent pulls the user onto its Wi-Fi bridge.
        moved = admin.request("POST", "/v1/users/walker/move", json={"ap": "ap-2"})
        assert (moved["user"]["ap"], moved["user"]["previous"]) == ("ap-2", "ap-1"), moved
        assert users.where("walker") == "ap-2"
        svc = until("the service to follow to ap-2",
                    lambda: settled_at(admin, "follow", "ap-2"))
        assert [i["node"] for i in svc["instances"]] == ["ap-2"]
        time.sleep(1)
    assert run["summary"]["failed"] == 0, run["summary"]
    ops = policy_ops(admin, "follow", "migrate")
    assert len(ops) == 1 and ops[0]["state"] == "SUCCEEDED", ops
    assert ops[0]["params"]["reason"].startswith("follow-the-user: 1 user(s) at ap-2")


def test_oscillating_user_moves_the_service_at_most_once_per_handover(
        edge, admin, mobility):
    users = mobility(follow_the_user=True)
    with walking(edge, admin, users, "pingpong", "dancer") as run:
        # Flipping between ap-1 and ap-2 every second for 8 s (faster than
        # the 2 s dwell), then staying at ap-2.
        rows = ["%g,dancer,%s\n" % (t, "ap-2" if t % 2 else "ap-1")
                for t in range(1, 9)] + ["9,dancer,ap-2\n"]
        steps = traces.parse(rows, edge.net.aps)
        traces.replay(steps, users.attach, users.detach)
        until("the service to settle at ap-2",
              lambda: settled_at(admin, "pingpong", "ap-2"))
        time.sleep(3)  # more rounds: nothing else happens
    migrations = policy_ops(admin, "pingpong", "migrate")
    assert 1 <= len(migrations) <= len(steps) - 1  # at most one per handover
    assert len(migrations) == 1, [o["params"]["reason"] for o in migrations]
    assert run["summary"]["failed"] == 0, run["summary"]


def test_standby_starts_before_the_move_and_goes_with_the_prediction(
        edge, admin, mobility):
    users = mobility(ahead_of_handover=True, handover_probability=0.5)
    with walking(edge, admin, users, "ahead", "runner") as run:
        # ap-1's only neighbour is ap-2: the standby goes there while the
        # user is still at ap-1.
        standby_up(admin, "ahead")
        assert users.where("runner") == "ap-1"
        ops = policy_ops(admin, "ahead", "scale")
        assert ops and ops[0]["params"]["reason"].startswith(
            "ahead-of-handover: user runner at ap-1 is likely"), ops
        assert ops[0]["params"]["node"] == "ap-2"
        # The user leaves: nothing predicts ap-2 any more, the standby goes.
        left = time.monotonic()
        drops = standby_dropped(admin, users, "runner", "ahead")
    assert drops and drops[0]["state"] == "SUCCEEDED", drops
    # Every request before the user left had its answer (after it, the
    # detached user has no network).
    before = [r for r in run["results"] if r["end"] < left]
    assert before and all(r["ok"] for r in before), loadgen.summarize(before)


def test_a_standby_alive_when_the_manager_is_killed_is_reused_then_removed(
        edge, admin, mobility):
    """SIGKILL with a standby up: the restarted manager knows it is its
    standby (persisted with its scale operation), starts no second one,
    and drops it when the prediction goes: nothing leaks."""
    opts = dict(ahead_of_handover=True, handover_probability=0.5)
    users = mobility(**opts)
    with walking(edge, admin, users, "crash", "sprinter"):
        standby_up(admin, "crash")
        # Its scale operation over (a killed one would be resumed, which
        # may replace the instance): the standby is simply alive.
        until("the standby's operation to end", lambda: admin.service(
            "crash")["state"] == "RUNNING" and not admin.service("crash")["operation"])
        standby = [i["id"] for i in admin.service("crash")["instances"]
                   if i["node"] == "ap-2"]
        mobility(**opts)  # SIGKILL, and the same policies again
        time.sleep(3)     # several rounds: the standby is kept, not doubled
        svc = admin.service("crash")
        assert [i["id"] for i in svc["instances"] if i["node"] == "ap-2"] == standby
        assert len(svc["instances"]) == 2, svc["instances"]
        drops = standby_dropped(admin, users, "sprinter", "crash")
    assert len(drops) == 1 and drops[0]["state"] == "SUCCEEDED", drops
