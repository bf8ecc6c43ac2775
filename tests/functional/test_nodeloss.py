"""Edge autonomy and node loss on a real edge.

An access point keeps serving while the manager is away, and a restarted
manager changes nothing.  An access point powered off (agent, containers,
HAProxy, libvirtd killed) is lost after [manager] node_lost_grace: its
service comes back elsewhere with the state of its last snapshot, and when
the node returns its stale container is removed and gets no request.
The service's app reads its state once, when it starts: the replacement
is started held, gets the snapshot, and only then starts its app, with
the lost instance's role.
"""
import json
import signal
import time

import pytest

from mec_conpaas.agents.node import httpserver
from mec_conpaas.manager import service as service_mod
from tests.functional.conftest import all_containers
from tests.functional.conftest import client_get
from tests.functional.conftest import wait_op
from tests.functional.test_stateful import MEMCOUNTER

GRACE = 8  # s; the edge's node_heartbeat_timeout is 6


def wait_for(what, predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def all_up(admin):
    return all(n["state"] == "up" for n in admin.nodes())


def hits(edge, ap, port):
    """One request through ``ap``'s endpoint from its Wi-Fi client: the
    counter it answers and the instance that served it."""
    body = json.loads(client_get(edge, ap, port)["body"])
    return body["hits"], body["instance"]


def answers(edge, ap, port):
    try:
        return hits(edge, ap, port)
    except AssertionError:  # 503 until the manager gives the proxy servers
        return None


def agent(edge, ap, method, path):
    token = open(edge.path("nodes", ap, "node-agent.token")).read().strip()
    return httpserver.call(method, "http://%s:9681%s" % (
        edge.net.bridge_address(ap), path), token, timeout=10)


def snapshot_hits(edge, svc, instance):
    try:
        with open(edge.path("master", "snapshots", svc, instance, "current",
                            "state", "hits")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def healing(edge, admin, tmp_path_factory):
    saved = dict(edge.manager_opts)
    edge.restart_manager(node_lost_grace=GRACE, snapshot_interval=1)
    try:
        wait_for("nodes up", lambda: all_up(admin))
        # An app that reads its counter once, when it starts: a replacement
        # counts on from the snapshot only if it was put in before the start.
        bundle = tmp_path_factory.mktemp("nodeloss") / "memcounter.tar.gz"
        bundle.write_bytes(service_mod.build_sample_bundle(MEMCOUNTER))
        res = admin.create_service("web", "lost", node="ap-2", bundle=str(bundle))
        wait_op(admin, res)
        yield admin.service("lost")
    finally:
        # The later modules must not see heals behind their backs, even
        # when this setup failed.
        edge.manager_opts.clear()
        edge.manager_opts.update(saved)
        edge.restart_manager()
        wait_for("nodes up", lambda: all_up(admin))
    if any(s["name"] == "lost" for s in admin.services()):
        wait_op(admin, admin.delete_service("lost"))


def test_the_access_point_serves_while_the_manager_is_away(edge, admin, healing):
    svc = healing
    before = hits(edge, "ap-2", svc["port"])
    edge.kill("manager", signal.SIGKILL)
    try:
        wait_for("manager dead", lambda: not edge._pid("manager"))
        # Away for longer than the grace: still answering, from two APs.
        away = time.monotonic() + GRACE + 2
        n = before[0]
        while time.monotonic() < away:
            for ap in ("ap-2", "ap-1"):
                count, inst = hits(edge, ap, svc["port"])
                n += 1
                assert (count, inst) == (n, before[1])
            time.sleep(0.5)
    finally:
        edge.start_manager()
    wait_for("nodes heartbeat again", lambda: all_up(admin))
    # A restarted manager counts the grace from its own start: nothing moves.
    time.sleep(GRACE + 3)
    after = admin.service("lost")
    assert after["instances"] == svc["instances"] and after["state"] == "RUNNING"
    assert after["operation"] is None
    assert not [o for o in admin.operations() if o["kind"] == "heal"]
    assert hits(edge, "ap-2", svc["port"]) == (n + 1, before[1])


def test_a_lost_node_s_service_comes_back_elsewhere_with_its_snapshot(
        edge, admin, healing):
    svc = healing
    port, [old] = svc["port"], svc["instances"]
    assert old["node"] == "ap-2"
    for _ in range(3):
        count, _ = hits(edge, "ap-1", port)
    wait_for("a snapshot with %d hits" % count,
             lambda: snapshot_hits(edge, svc["id"], old["id"]) == count, timeout=20)
    t0 = time.monotonic()
    edge.node_down("ap-2")
    try:
        def healed():
            s = admin.service("lost")
            return s if s["state"] == "RUNNING" and s["operation"] is None and [
                i for i in s["instances"] if i["node"] != "ap-2"] else None
        now = wait_for("the service re-placed", healed, timeout=GRACE + 60)
        healed_in = time.monotonic() - t0
        [new] = now["instances"]
        # The lost master is replaced by a master.
        assert (old["role"], new["role"]) == ("master", "master")
        assert new["state"] == "ACTIVE" and new["node"] != "ap-2"
        assert now["home_node"] == new["node"]
        [op] = [o for o in admin.operations() if o["kind"] == "heal"]
        assert op["state"] == "SUCCEEDED", op
        assert list(op["params"]["nodes"]) == ["ap-2"]
        assert op["step"].startswith("done; re-placed %s with %s (snapshot of " % (
            old["id"], new["id"])), op["step"]
        # The last snapshot is what the new instance's app loaded when it
        # started, as a master.
        body = json.loads(client_get(edge, "ap-1", port)["body"])
        assert (body["hits"], body["instance"], body["role"]) == (
            count + 1, new["address"], "master")
        assert hits(edge, "ap-3", port) == (count + 2, new["address"])
        print("re-placed %.1f s after power-off (grace %d s)" % (healed_in, GRACE))
    finally:
        edge.node_up("ap-2")
    wait_for("ap-2 back", lambda: admin.node("ap-2")["state"] == "up")
    # Its stale container is removed by the sweep, never counted again.
    wait_for("stale instance removed from ap-2", lambda: old["id"] not in [
        i["id"] for i in agent(edge, "ap-2", "GET", "/v1/instances")["instances"]],
        timeout=30)
    assert all_containers(edge)["ap-2"] == []
    assert admin.service("lost")["instances"] == now["instances"]
    # ap-2's own endpoint routes to the new instance only.
    first = wait_for("ap-2's endpoint answers", lambda: answers(edge, "ap-2", port),
                     timeout=30)
    assert first == (count + 3, new["address"])
    for n in range(4, 8):
        assert hits(edge, "ap-2", port) == (count + n, new["address"])
    proxy = agent(edge, "ap-2", "GET", "/v1/proxy")["services"][svc["id"]]
    assert [s["addr"].split(":")[0] for s in proxy["servers"]] == [new["address"]]
