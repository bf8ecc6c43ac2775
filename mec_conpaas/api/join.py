"""Joining and leaving: the routes of manager/join.py and allocation.py.

``POST /v1/nodes/join`` is authenticated by a join token, not by the
policy's callers: it is the one call a node makes before it has a
credential of its own.
"""
import logging

import flask
from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import allocation
from mec_conpaas.manager import auth
from mec_conpaas.manager import join
from mec_conpaas.manager import routecache
from mec_conpaas.manager import tls

LOG = logging.getLogger(__name__)


def pools(conf):
    return allocation.Pools(conf.enrollment)


def on_register(s, conf, ctx, body, node, driver):
    """Registration's allocator part, in its transaction: a node's own
    credential registers only that node; a joined node keeps its allocated
    network; a node with fixed networks (a playbook's) has them recorded,
    as shared where its backend's instances share one (``driver``)."""
    join.check_own(ctx, body["id"])
    # A node whose agent serves the certificate issued at join: reached over
    # HTTPS, its certificate checked for its own name.
    node.agent_server_name = tls.agent_server_name(body["id"]) \
        if body.get("agent_tls") else None
    alloc = allocation.of_node(s, body["id"])
    if alloc is not None and alloc.source == "joined":
        node.instance_network = alloc.instance_network
        if alloc.node_name != body["name"]:
            allocation.allocate(s, pools(conf), alloc.identity, body["id"], body["name"])
    elif body.get("instance_network"):
        allocation.record(s, pools(conf), body["id"], body["name"],
                          body["instance_network"], body.get("client_network"),
                          shared=shared_network(driver, body))


SETTINGS_WARNINGS_MAX = 50
SETTINGS_WARNING_CHARS = 500


def settings_warnings(body):
    """The node's first-boot findings on its card's settings file, as kept
    for ``node show``: a list of strings (None: no card), at most
    SETTINGS_WARNINGS_MAX of at most SETTINGS_WARNING_CHARS each (the rest
    counted, not kept: a registration is not refused for its notes)."""
    got = body.get("settings_warnings")
    if got is None:
        return None
    if not isinstance(got, list) or not all(isinstance(w, str) for w in got):
        raise exception.BadRequest("settings_warnings must be a list of strings (the "
                                   "findings of the node's first boot), or absent")
    kept = [w[:SETTINGS_WARNING_CHARS] for w in got[:SETTINGS_WARNINGS_MAX]]
    if len(got) > SETTINGS_WARNINGS_MAX:
        kept.append("... and %d more" % (len(got) - SETTINGS_WARNINGS_MAX))
    return kept


def shared_network(driver, body):
    """Whether the node's instance network is one its backend shares with
    other nodes (an agent that does not send its backend: libvirt's, an own
    network, as before)."""
    return driver.shares_instance_network(body.get("container_backend", "libvirt"))


def heartbeat_answer(s, ctx, node_id, routes_version=None):
    """What a node learns from each heartbeat: its allocation and the routes
    to every other node's subnets (nodes that left are no longer listed, so
    their routes go); the routes only when ``routes_version``, the version
    the node echoes, is not the current one (manager/routecache.py)."""
    join.check_own(ctx, node_id)
    return {"allocation": allocation.view(allocation.of_node(s, node_id)),
            **routecache.answer(s, node_id, routes_version)}


def enrollment_caller(context):
    """Who fetches the OpenStack enrollment: a node credential (or an
    admin), or a node's first boot still holding its join token (not yet
    expired or revoked; a used-up one still counts: the node agent may have
    joined first).  Nothing is consumed."""
    try:
        return context("nodes:enrollment")
    except exception.Unauthorized:
        header = flask.request.headers.get("Authorization")
        with session_scope() as s:
            row = join.find_token(s, header)
            if row is None or join.token_view(row)["state"] not in ("valid", "used up"):
                raise
            return auth.Context(role="node", user="join-token",
                                tenant_id=None, token_id="join:" + row.id)


def register(app, manager, context):
    conf = manager.conf

    @app.get("/v1/ca.pem")
    def ca_certificate():
        """Unauthenticated, like K3s's /cacerts: a joining node compares its
        SHA-256 with its token's pin before it sends the token."""
        try:
            with open(conf.tls.ca_file, "rb") as f:
                pem = f.read()
        except OSError:
            raise exception.NotFound("this manager has no deployment CA ([tls] "
                                     "ca_file): it serves plain HTTP")
        return flask.Response(pem, mimetype="application/x-pem-file")

    @app.post("/v1/nodes/join")
    def join_node():
        body = flask.request.get_json(silent=True)
        if not isinstance(body, dict):
            raise exception.BadRequest("request body must be a JSON object")
        with session_scope() as s:
            answer = join.join(s, pools(conf), flask.request.headers.get(
                "Authorization"), body,
                agent_cert=lambda node_id: tls.issue_agent_cert(conf, node_id),
                shared=shared_network(manager.cluster.driver, body))
        LOG.info("node %s joined from %s", body.get("name"), flask.request.remote_addr)
        return flask.jsonify(answer)

    @app.delete("/v1/nodes/<name>")
    def delete_node(name):
        """remove-node: the node, its allocation and credential go; the other
        nodes drop their routes to it at their next heartbeat."""
        context("nodes:delete")
        with session_scope() as s:
            node = manager.services.node(s, name)
            held = s.scalars(select(models.Instance).where(
                models.Instance.node_name == node.name)).all()
            if held:
                raise exception.Conflict(
                    "node %s still has %d instance(s): drain it first (mec-conpaas "
                    "node drain %s), then delete it" % (node.name, len(held), node.name))
            alloc = allocation.release(s, node.id)
            revoked = join.revoke_credentials(s, node.id)
            s.delete(node)
            LOG.info("node %s removed (allocation %s released, %d credential(s) "
                     "revoked)", name, alloc.number if alloc else None, revoked)
        return flask.jsonify(deleted=name)

    @app.post("/v1/nodes/<name>/credential/revoke")
    def revoke_credential(name):
        """The node's own credential stops working at once; it must join
        again with a new join token."""
        context("nodes:credential:revoke")
        with session_scope() as s:
            node = manager.services.node(s, name)
            revoked = join.revoke_credentials(s, node.id)
        LOG.info("credential of node %s revoked (%d)", name, revoked)
        return flask.jsonify(node=name, revoked=revoked)
