"""Joining (issue 11): the allocator, join tokens, per-node credentials,
routes in the heartbeat answer, the pinned TLS join, and the node agent's
route table, on a real store, a real HTTPS server and a real network
namespace."""
import datetime
import ipaddress
import json
import os
import random
import subprocess
import sys
import threading

import pytest
from sqlalchemy import select

from mec_conpaas.agents.node import joining
from mec_conpaas.api import app as app_mod
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.manager import allocation
from mec_conpaas.manager import join
from mec_conpaas.manager import tls
from tests.unit.test_api_nodes import Api
from tests.unit.test_api_nodes import edge  # noqa: F401 (fixture)


def _pools(conf):
    return allocation.Pools(conf.enrollment)


def _live_invariants(s):
    rows = list(s.scalars(select(models.NodeAllocation)))
    numbers = [a.number for a in rows]
    assert len(numbers) == len(set(numbers))
    nets = [ipaddress.IPv4Network(n) for a in rows
            for n in (a.instance_network, a.client_network) if n]
    shared = {ipaddress.IPv4Network(a.shared_network) for a in rows if a.shared_network}
    for a in shared:  # a shared network overlaps no node's own
        assert not [b for b in nets if a.overlaps(b)], a
    for i, a in enumerate(nets):
        for b in nets[i + 1:]:
            assert not a.overlaps(b), (a, b)
    return rows


def test_200_nodes_join_and_leave_in_random_order(store):
    """200 nodes join and leave in a random order (plus re-joins of a node
    still there): no two live nodes ever share a number or a subnet, a
    re-joining identity gets its allocation back, a playbook's fixed
    networks are never handed out, channels spread over 1/6/11."""
    rng = random.Random(11)
    pools = _pools(store)
    events = []
    for n in range(200):  # each node joins, maybe re-joins, then leaves
        events.append([("join", n)] + [("rejoin", n)] * rng.randrange(2) + [("leave", n)])
    order = []
    while any(events):
        chain = rng.choice([e for e in events if e])
        order.append(chain.pop(0))
    live, peak = {}, 0
    with db.session_scope() as s:
        # A playbook-deployed AP with the playbooks' default networks.
        allocation.record(s, pools, "static-ap", "ap-static", "10.100.1.0/24",
                          "10.42.1.0/24")
        for step, (what, n) in enumerate(order):
            ident, node_id = "serial:%08x" % n, "node-%d" % n
            if what == "leave":
                allocation.release(s, node_id)
                del live[n]
            else:
                use = {c: 0 for c in (1, 6, 11)}
                for r in s.scalars(select(models.NodeAllocation)):
                    if r.wifi_channel and r.identity != ident:
                        use[r.wifi_channel] += 1
                a = allocation.allocate(s, pools, ident, node_id, "n%d" % n)
                if what == "join":  # a new node takes a least-used channel
                    assert use[a.wifi_channel] == min(use.values())
                got = (a.number, a.instance_network, a.client_network)
                assert live.setdefault(n, got) == got  # a re-join: the same
                assert a.instance_network != "10.100.1.0/24"
                assert a.wifi_channel in (1, 6, 11)
            peak = max(peak, len(live))
            rows = list(s.scalars(select(models.NodeAllocation)))
            assert len(rows) == len(live) + 1
            assert len({a.number for a in rows}) == len(rows)
            assert len({a.instance_network for a in rows}) == len(rows)
            assert len({a.client_network for a in rows}) == len(rows)
            if step % 40 == 0:
                _live_invariants(s)
    assert peak > 50


def test_pool_exhaustion_and_bad_pools_say_what_to_fix(store):
    store.set_override("instance_network_pool", "10.100.0.0/30", group="enrollment")
    store.set_override("instance_network_prefix", 30, group="enrollment")
    try:
        with pytest.raises(Exception, match="not larger than its prefix"):
            _pools(store)
    finally:
        store.clear_override("instance_network_pool", group="enrollment")
        store.clear_override("instance_network_prefix", group="enrollment")
    store.set_override("instance_network_pool", "10.100.0.0/23", group="enrollment")
    try:
        pools = _pools(store)
        with db.session_scope() as s:
            allocation.allocate(s, pools, "a", "id-a", "a")
            with pytest.raises(Exception, match="no free node number"):
                allocation.allocate(s, pools, "b", "id-b", "b")
    finally:
        store.clear_override("instance_network_pool", group="enrollment")


def _token(ttl=None, uses=1):
    with db.session_scope() as s:
        row, secret = join.create_token(s, ttl, uses, "test")
        return row.id, secret


def _join_body(n):
    return {"id": "00000000-0000-4000-8000-%012d" % n, "name": "pi-%d" % n,
            "identity": "serial:%08d" % n, "hostname": "pi-%d" % n,
            "mac": "02:00:00:00:00:%02x" % n}


def _registration(body, address):
    return {"id": body["id"], "name": body["name"], "hostname": body["hostname"],
            "mac": body["mac"], "address": address, "agent_port": 9681,
            "agent_token": "agent-secret", "container_backend": "none"}


@pytest.fixture
def api(edge):  # noqa: F811
    admin, _alice, manager = edge
    return admin, app_mod.create_app(manager)


def test_join_register_heartbeat_routes_and_remove(api):
    admin, flask_app = api
    _tid, secret = _token(uses=2)
    joined = []
    for n, addr in ((1, "192.0.2.11"), (2, "192.0.2.12")):
        body = _join_body(n)
        code, got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=body)
        assert code == 200, got
        me = Api(flask_app, got["credential"])
        assert me("POST", "/v1/nodes/register", json=_registration(body, addr))[0] == 200
        joined.append((body, got, me))
    (b1, j1, n1), (b2, j2, n2) = joined
    assert j1["allocation"]["instance_network"] != j2["allocation"]["instance_network"]
    assert j1["allocation"]["wifi_channel"] != j2["allocation"]["wifi_channel"]
    # The token allowed two joins: a third is refused, saying why.
    code, got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=_join_body(3))
    assert code == 401 and "used up" in got["error"]["message"]
    # Heartbeat answers: each node learns the other's subnets via its address.
    code, hb = n1("POST", "/v1/nodes/%s/heartbeat" % b1["id"], json={"report": {}})
    assert code == 200
    assert {"node": "pi-2", "subnet": j2["allocation"]["client_network"],
            "via": "192.0.2.12"} in hb["routes"]
    assert not [r for r in hb["routes"] if r["node"] == "pi-1"]
    assert hb["allocation"] == j1["allocation"]
    # node show has the allocation.
    code, shown = admin("GET", "/v1/nodes/pi-2")
    assert shown["node"]["allocation"]["number"] == j2["allocation"]["number"]
    # remove-node: pi-2 is gone, so is its route from pi-1's next answer.
    assert admin("DELETE", "/v1/nodes/pi-2")[0] == 200
    code, hb = n1("POST", "/v1/nodes/%s/heartbeat" % b1["id"], json={"report": {}})
    assert not [r for r in hb["routes"] if r["node"] == "pi-2"]
    with db.session_scope() as s:
        assert allocation.of_node(s, b2["id"]) is None
    # ... and its credential went with it.
    code, got = n2("POST", "/v1/nodes/%s/heartbeat" % b2["id"], json={"report": {}})
    assert code == 401


def test_two_nova_aps_share_the_provider_network_beside_an_lxc_ap(api):
    """Two nova APs name neutron's provider network as their instance
    network, one lxc AP has its own: both nova APs join and register, the
    provider network is recorded as shared and routed via neither (it is
    on-link on both), while their client subnets and the lxc AP's networks
    are routed as before; nobody may take the shared network as their own."""
    admin, flask_app = api
    _tid, secret = _token(uses=5)
    provider = "10.232.0.0/24"
    nodes = {}
    for n, backend, inst in ((1, "nova", provider), (2, "nova", provider),
                             (3, "libvirt", "10.100.3.0/24")):
        body = dict(_join_body(n), instance_network=inst,
                    client_network="10.42.%d.0/24" % n, container_backend=backend)
        code, got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=body)
        assert code == 200, got
        me = Api(flask_app, got["credential"])
        reg = dict(_registration(body, "192.0.2.1%d" % n), container_backend=backend,
                   instance_network=inst, client_network=body["client_network"])
        assert me("POST", "/v1/nodes/register", json=reg)[0] == 200
        nodes[n] = (body, got["allocation"], me)
    for n in (1, 2):
        alloc = nodes[n][1]
        assert (alloc["instance_network"], alloc["instance_network_shared"]) == (
            provider, True)
    assert nodes[3][1]["instance_network_shared"] is False
    with db.session_scope() as s:
        rows = {a.node_name: a for a in s.scalars(select(models.NodeAllocation))}
        assert [(rows["pi-%d" % n].instance_network, rows["pi-%d" % n].shared_network)
                for n in (1, 2, 3)] == [(None, provider), (None, provider),
                                        ("10.100.3.0/24", None)]
        master = allocation.routes(s, None)
    expected = {("pi-1", "10.42.1.0/24", "192.0.2.11"),
                ("pi-2", "10.42.2.0/24", "192.0.2.12"),
                ("pi-3", "10.100.3.0/24", "192.0.2.13"),
                ("pi-3", "10.42.3.0/24", "192.0.2.13")}
    assert {(r["node"], r["subnet"], r["via"]) for r in master} == expected
    for n in (1, 2, 3):
        body, alloc, me = nodes[n]
        code, hb = me("POST", "/v1/nodes/%s/heartbeat" % body["id"], json={"report": {}})
        assert code == 200 and hb["allocation"] == alloc
        assert {(r["node"], r["subnet"], r["via"]) for r in hb["routes"]} == {
            r for r in expected if r[0] != body["name"]}
    # The shared network is nobody's own: an lxc AP naming it (or a part of
    # it), or a nova AP naming an overlapping other one, is refused, with
    # nothing stored.
    for n, backend, inst in ((4, "libvirt", provider), (5, "libvirt", "10.232.0.0/25"),
                             (6, "nova", "10.232.0.0/23")):
        body = dict(_join_body(n), instance_network=inst,
                    client_network="10.42.%d.0/24" % n, container_backend=backend)
        code, got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=body)
        assert (code, got["error"]["message"]) == (409, (
            "network %s of node pi-%d overlaps %s of node pi-1 (number %d): give this "
            "node other networks, or remove the other node"
            % (inst, n, provider, nodes[1][1]["number"]))), got
    # remove-node of one nova AP leaves the other's record as it was.
    assert admin("DELETE", "/v1/nodes/pi-1")[0] == 200
    with db.session_scope() as s:
        assert [(a.node_name, a.shared_network) for a in s.scalars(
            select(models.NodeAllocation).where(
                models.NodeAllocation.shared_network.is_not(None)))] == [("pi-2", provider)]
        _live_invariants(s)


def test_a_node_credential_cannot_touch_another_node(api):
    admin, flask_app = api
    _tid, secret = _token(uses=2)
    creds = {}
    for n in (1, 2):
        body = _join_body(n)
        code, got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=body)
        creds[n] = Api(flask_app, got["credential"])
        creds[n]("POST", "/v1/nodes/register",
                 json=_registration(body, "192.0.2.1%d" % n))
    victim = _join_body(2)
    with db.session_scope() as s:
        before = s.get(models.Node, victim["id"])
        before = (before.address, before.agent_token, before.last_heartbeat)
    code, got = creds[1]("POST", "/v1/nodes/register",
                         json=_registration(victim, "203.0.113.66"))
    assert code == 403 and "belongs to node %s" % _join_body(1)["id"] in \
        got["error"]["message"]
    code, got = creds[1]("POST", "/v1/nodes/%s/heartbeat" % victim["id"],
                         json={"report": {"evil": 1}})
    assert code == 403
    with db.session_scope() as s:
        after = s.get(models.Node, victim["id"])
        assert (after.address, after.agent_token, after.last_heartbeat) == before
        assert after.report == {}
    # Revoked: 401 from then on, and it says so.
    assert admin("POST", "/v1/nodes/pi-1/credential/revoke")[1]["revoked"] == 1
    code, got = creds[1]("POST", "/v1/nodes/%s/heartbeat" % _join_body(1)["id"],
                         json={"report": {}})
    assert code == 401 and "unknown token" in got["error"]["message"]


def _node_state(node_id):
    """What a take-over would change: the node's record, its credentials,
    its allocation."""
    with db.session_scope() as s:
        node = s.get(models.Node, node_id)
        creds = sorted((t.id, t.secret_hash) for t in s.scalars(select(models.Token).where(
            models.Token.user == join.NODE_USER + node_id)))
        return ((node.name, node.address, node.agent_token, node.mac) if node else None,
                creds, allocation.view(allocation.of_node(s, node_id)))


def test_a_join_token_cannot_take_over_a_node_that_holds_its_credential(api):
    """A re-flashed card (same identity, no credential) or anyone with a join
    token claiming a known identity or node id is refused, saying what the
    admin does; nothing changes until the admin revokes the credential."""
    admin, flask_app = api
    _tid, secret = _token(uses=1)
    body = _join_body(1)
    code, first = Api(flask_app, secret)("POST", "/v1/nodes/join", json=body)
    owner = Api(flask_app, first["credential"])
    assert owner("POST", "/v1/nodes/register",
                 json=_registration(body, "192.0.2.11"))[0] == 200
    before = _node_state(body["id"])
    tid, secret = _token(uses=0)
    claims = (dict(body, id="00000000-0000-4000-8000-00000000beef"),  # same identity
              dict(_join_body(7), id=body["id"]),                       # same node id
              dict(body))                                               # both
    for claim in claims:
        code, got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=claim)
        assert code == 409, got
        assert got["error"]["code"] == "node_identity_taken"
        assert "pi-1, which holds its own credential" in got["error"]["message"]
        assert "mec-conpaas node credential revoke pi-1" in got["error"]["message"]
        assert "credential" not in got and "agent_certificate" not in got
    assert _node_state(body["id"]) == before
    with db.session_scope() as s:
        assert s.get(models.JoinToken, tid).uses == 0  # refusals count no use
        assert s.get(models.NodeAllocation, _join_body(7)["identity"]) is None
    assert owner("POST", "/v1/nodes/%s/heartbeat" % body["id"],
                 json={"report": {}})[0] == 200
    # The admin's approval: revoke the old credential; the new card joins as
    # the same node with the same allocation, the old credential is dead.
    assert admin("POST", "/v1/nodes/pi-1/credential/revoke")[0] == 200
    code, again = Api(flask_app, secret)("POST", "/v1/nodes/join", json=claims[0])
    assert code == 200, again
    assert again["id"] == body["id"] and again["allocation"] == first["allocation"]
    assert owner("POST", "/v1/nodes/%s/heartbeat" % body["id"],
                 json={"report": {}})[0] == 401
    assert Api(flask_app, again["credential"])(
        "POST", "/v1/nodes/%s/heartbeat" % body["id"], json={"report": {}})[0] == 200


def test_a_join_repeated_after_a_lost_answer_proves_itself_with_the_chosen_credential(api):
    """K3s's node password: the node chooses its credential and keeps it
    until the answer is in; the same join sent again (answer lost) is let in
    and gets the same credential, a card with another one is refused."""
    _admin, flask_app = api
    tid, secret = _token(uses=0)
    chosen = "c" * 43
    body = dict(_join_body(1), credential=chosen)
    code, first = Api(flask_app, secret)("POST", "/v1/nodes/join", json=body)
    assert code == 200 and first["credential"] == chosen
    code, again = Api(flask_app, secret)("POST", "/v1/nodes/join", json=body)
    assert code == 200 and again["credential"] == chosen, again
    assert again["id"] == first["id"] and again["allocation"] == first["allocation"]
    code, got = Api(flask_app, secret)("POST", "/v1/nodes/join",
                                       json=dict(body, credential="d" * 43))
    assert code == 409 and got["error"]["code"] == "node_identity_taken"
    assert Api(flask_app, chosen)("POST", "/v1/nodes/register", json=_registration(
        _join_body(1), "192.0.2.11"))[0] == 200
    for bad in ("short", "x" * 43 + " ", 42):
        code, got = Api(flask_app, secret)("POST", "/v1/nodes/join",
                                           json=dict(_join_body(2), credential=bad))
        assert code == 400 and "credential (the one this node chose)" in \
            got["error"]["message"]
    with db.session_scope() as s:
        assert s.get(models.JoinToken, tid).uses == 2


def test_a_node_joins_again_with_its_own_credential_and_only_as_itself(api):
    _admin, flask_app = api
    tid, secret = _token(uses=2)
    joined = {}
    for n in (1, 2):
        code, joined[n] = Api(flask_app, secret)("POST", "/v1/nodes/join",
                                                 json=_join_body(n))
        Api(flask_app, joined[n]["credential"])(
            "POST", "/v1/nodes/register", json=_registration(_join_body(n), "192.0.2.1%d" % n))
    # Node 2's credential joining as node 1: refused, node 1 untouched.
    before = _node_state(_join_body(1)["id"])
    code, got = Api(flask_app, joined[2]["credential"])(
        "POST", "/v1/nodes/join", json=_join_body(1))
    assert code == 403 and "a node joins again only as itself" in got["error"]["message"]
    assert _node_state(_join_body(1)["id"]) == before
    # Node 1 with its own: the same node and allocation, a new credential
    # (the old one stops working), no join token used.
    code, again = Api(flask_app, joined[1]["credential"])(
        "POST", "/v1/nodes/join", json=_join_body(1))
    assert code == 200, again
    assert again["id"] == _join_body(1)["id"]
    assert again["allocation"] == joined[1]["allocation"]
    assert again["credential"] != joined[1]["credential"]
    hb = "/v1/nodes/%s/heartbeat" % _join_body(1)["id"]
    assert Api(flask_app, joined[1]["credential"])("POST", hb, json={"report": {}})[0] == 401
    assert Api(flask_app, again["credential"])("POST", hb, json={"report": {}})[0] == 200
    with db.session_scope() as s:
        assert s.get(models.JoinToken, tid).uses == 2


def test_the_node_agent_shows_a_refused_rejoin_and_joins_as_itself(api, tmp_path, edge):  # noqa: F811
    """The agent's side (agents/node/joining.py) against the real manager app
    served on loopback: a card without the credential is refused with the
    admin's command in its notices; the node holding it joins again with it."""
    _admin, _alice, manager = edge
    _admin, flask_app = api
    from werkzeug.serving import make_server
    srv = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    conf = manager.conf
    notices = [str(tmp_path / "console"), str(tmp_path / "join.issue")]
    try:
        _tid, secret = _token(uses=0)
        _node_conf(conf, tmp_path, "http://127.0.0.1:%d" % srv.server_port, secret)
        conf.set_override("notices", notices, group="join")
        member = joining.Membership(conf)
        first = member.join(_join_body(1))
        assert not os.path.exists(tmp_path / "node" / "cred.pending")  # answer in
        # An answer lost on the way: the node kept its chosen credential only.
        os.unlink(tmp_path / "node" / "cred")
        (tmp_path / "node" / "cred.pending").write_text(first["credential"])
        retried = joining.Membership(conf).join(_join_body(1))
        assert retried["credential"] == first["credential"] and retried["id"] == first["id"]
        os.unlink(tmp_path / "node" / "cred")  # the card is re-flashed
        card = joining.Membership(conf)
        assert card.credential is None
        with pytest.raises(joining.JoinRefused, match="credential revoke pi-1") as e:
            card.join(_join_body(1))
        joining.notify(conf, e.value.message)
        for path in notices:
            assert "NOT JOINED" in open(path).read() and "revoke pi-1" in open(path).read()
        # The node that kept its credential joins again with it.
        member.credential = first["credential"]
        again = member.join(_join_body(1))
        assert again["id"] == first["id"] and again["allocation"] == first["allocation"]
        assert open(tmp_path / "node" / "cred").read() == again["credential"]
        joining.clear_notice(conf, "joined")
        assert not any(os.path.exists(p) for p in notices)
    finally:
        srv.shutdown()
        for opt in ("manager_url", "registration_token"):
            conf.clear_override(opt, group="node_agent")
        for opt in ("manager_ca_file", "credential_file", "notices"):
            conf.clear_override(opt, group="join")


def test_expired_and_revoked_join_tokens_are_refused_with_the_reason(api):
    _admin, flask_app = api
    tid, secret = _token(ttl=60)
    with db.session_scope() as s:
        s.get(models.JoinToken, tid).expires_at = models.utcnow() - \
            datetime.timedelta(seconds=1)
    code, got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=_join_body(1))
    assert code == 401 and "is expired" in got["error"]["message"]
    tid, secret = _token()
    with db.session_scope() as s:
        join.revoke_token(s, tid[:8])
    code, got = Api(flask_app, secret)("POST", "/v1/nodes/join", json=_join_body(1))
    assert code == 401 and "is revoked" in got["error"]["message"]
    code, got = Api(flask_app, "nonsense")("POST", "/v1/nodes/join", json=_join_body(1))
    assert code == 401 and "unknown join token" in got["error"]["message"]
    with db.session_scope() as s:
        assert s.scalars(select(models.NodeAllocation)).all() == []


def test_two_nodes_joining_at_once_get_different_subnets_and_channels(api):
    _admin, flask_app = api
    _tid, secret = _token(uses=0)
    answers, barrier = {}, threading.Barrier(2)

    def one(n):
        client = Api(flask_app, secret)
        barrier.wait()
        answers[n] = client("POST", "/v1/nodes/join", json=_join_body(n))
    threads = [threading.Thread(target=one, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = (answers[n][1]["allocation"] for n in (1, 2))
    assert answers[1][0] == answers[2][0] == 200
    assert a["number"] != b["number"]
    assert a["instance_network"] != b["instance_network"]
    assert a["client_network"] != b["client_network"]
    assert a["wifi_channel"] != b["wifi_channel"]


# -- pinned TLS ---------------------------------------------------------------
@pytest.fixture
def https_manager(edge, tmp_path):  # noqa: F811
    """The manager app behind its real HTTPS server (cheroot) on loopback,
    with a deployment CA; records the paths it was asked for."""
    _admin, _alice, manager = edge
    conf = manager.conf
    paths = {"ca": str(tmp_path / "ca.pem"), "ca_key": str(tmp_path / "ca-key.pem"),
             "cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem")}
    tls.ensure_ca(paths["ca"], paths["ca_key"])
    tls.issue_server_cert(paths["ca"], paths["ca_key"], paths["cert"], paths["key"],
                          ["127.0.0.1", "localhost"])
    for opt, key in (("ca_file", "ca"), ("cert_file", "cert"), ("key_file", "key")):
        conf.set_override(opt, paths[key], group="tls")
    conf.set_override("bind_host", "127.0.0.1", group="api")
    conf.set_override("bind_port", 0, group="api")
    flask_app = app_mod.create_app(manager)
    seen = []

    def recording(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return flask_app(environ, start_response)
    srv = tls.server(conf, recording)
    srv.prepare()
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    port = srv.bind_addr[1]
    yield conf, "https://127.0.0.1:%d" % port, seen
    srv.stop()
    for opt in ("ca_file", "cert_file", "key_file"):
        conf.clear_override(opt, group="tls")
    conf.clear_override("bind_host", group="api")
    conf.clear_override("bind_port", group="api")


def _node_conf(conf, tmp_path, url, token):
    conf.set_override("manager_url", url, group="node_agent")
    conf.set_override("registration_token", token, group="node_agent")
    conf.set_override("manager_ca_file", str(tmp_path / "node" / "ca.pem"), group="join")
    conf.set_override("credential_file", str(tmp_path / "node" / "cred"), group="join")
    return conf


def test_wrong_ca_hash_is_refused_before_anything_is_sent(https_manager, tmp_path,
                                                          caplog):
    conf, url, seen = https_manager
    tid, secret = _token()
    wrong = "0" * 64
    _node_conf(conf, tmp_path, url, join.format_token(wrong, secret))
    member = joining.Membership(conf)
    with pytest.raises(joining.JoinRefused, match="CA's SHA-256 is [0-9a-f]{64} but "
                       "the join token pins 0{64}; nothing was sent"):
        member.join(_join_body(1))
    assert seen == ["/v1/ca.pem"]  # the secret never left the node
    assert not os.path.exists(tmp_path / "node" / "cred")
    with db.session_scope() as s:
        assert s.get(models.JoinToken, tid).uses == 0
    # The right pin: joined over a connection verified against that CA.
    _node_conf(conf, tmp_path, url, join.format_token(tls.ca_hash(
        conf.tls.ca_file), secret))
    member = joining.Membership(conf)
    answer = member.join(_join_body(1))
    assert answer["allocation"]["number"] >= 1
    assert open(tmp_path / "node" / "cred").read() == answer["credential"]
    assert oct(os.stat(tmp_path / "node" / "cred").st_mode & 0o777) == "0o600"
    assert seen[-1] == "/v1/nodes/join"
    for opt in ("manager_url", "registration_token"):
        conf.clear_override(opt, group="node_agent")
    for opt in ("manager_ca_file", "credential_file"):
        conf.clear_override(opt, group="join")


# -- the node agent's routes ----------------------------------------------------
ROUTES_SCRIPT = """
import json, sys
from mec_conpaas.agents.node import routes
table = routes.RouteTable(201)
print(json.dumps(table.sync(json.loads(sys.argv[1]))))
"""


def test_route_table_installs_and_removes_only_its_own(tmp_path):
    ns = "mec-ut-routes-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def ip(*args):
            return subprocess.run(["ip", "-n", ns] + list(args), check=True,
                                  capture_output=True, text=True).stdout
        ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
        ip("link", "set", "d1", "up")
        ip("addr", "add", "192.0.2.1/24", "dev", "d0")
        ip("link", "set", "d0", "up")
        ip("route", "add", "10.100.6.0/24", "via", "192.0.2.6")  # a static one

        def sync(routes):
            out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                                  ROUTES_SCRIPT, json.dumps(routes)], check=True,
                                 capture_output=True, text=True).stdout
            return json.loads(out)
        want = [{"node": "a", "subnet": "10.100.5.0/24", "via": "192.0.2.5"},
                {"node": "b", "subnet": "10.100.6.0/24", "via": "192.0.2.7"}]
        assert sync(want) == ["+10.100.5.0/24 via 192.0.2.5"]
        table = ip("route", "show")
        assert "10.100.5.0/24 via 192.0.2.5 dev d0 proto 201" in table
        assert "10.100.6.0/24 via 192.0.2.6 dev d0" in table  # left alone
        assert sync(want) == []  # already so
        assert sync(want[1:]) == ["-10.100.5.0/24"]
        table = ip("route", "show")
        assert "10.100.5.0/24" not in table and "10.100.6.0/24 via 192.0.2.6" in table
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
