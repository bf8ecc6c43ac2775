"""Join tokens and per-node credentials.

A join token (``mec-conpaas-manage node-token create``) is
``<SHA-256 of the deployment CA>::<secret>`` (the K3s / kubeadm form): the
node checks the CA before it sends the secret.  It expires and can be
limited to N joins; only the secret's SHA-256 is stored.  Joining gives the
node its allocation and its OWN credential (a ``node`` token bound to its
id): that one registers and heartbeats this node only, and an admin can
revoke it (``mec-conpaas node credential revoke NODE``).
"""
import datetime
import logging
import re
import secrets

from sqlalchemy import delete
from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.manager import allocation
from mec_conpaas.manager import auth

LOG = logging.getLogger(__name__)
SEPARATOR = "::"
NODE_USER = "node:"  # a node credential's Token.user is NODE_USER + node id
IDENTITY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
NODE_ID_RE = re.compile(r"^[0-9a-f-]{36}$")


class UnknownJoinToken(exception.Unauthorized):
    code = "unknown_join_token"


def format_token(ca_hash, secret):
    """What goes on the card; without a CA (plain HTTP) the secret alone."""
    return "%s%s%s" % (ca_hash, SEPARATOR, secret) if ca_hash else secret


def create_token(session, ttl=None, uses=1, description=None):
    """(row, secret); ``ttl`` seconds (None or 0: no expiry), ``uses`` joins
    (None or 0: unlimited)."""
    secret = secrets.token_urlsafe(32)
    row = models.JoinToken(
        secret_hash=auth.digest(secret), description=description,
        expires_at=(models.utcnow() + datetime.timedelta(seconds=ttl)) if ttl else None,
        max_uses=uses or None, uses=0)
    session.add(row)
    session.flush()
    return row, secret


def token_view(row, now=None):
    now = now or models.utcnow()
    if row.revoked:
        state = "revoked"
    elif row.expires_at is not None and row.expires_at <= now:
        state = "expired"
    elif row.max_uses is not None and row.uses >= row.max_uses:
        state = "used up"
    else:
        state = "valid"
    return {"id": row.id, "state": state, "uses": row.uses, "max_uses": row.max_uses,
            "expires_at": row.expires_at.isoformat(timespec="seconds") + "Z"
            if row.expires_at else None,
            "created_at": row.created_at.isoformat(timespec="seconds") + "Z",
            "description": row.description}


def list_tokens(session):
    return list(session.scalars(select(models.JoinToken)
                                .order_by(models.JoinToken.created_at)))


def revoke_token(session, token_id):
    rows = [r for r in list_tokens(session) if r.id.startswith(token_id)]
    if len(rows) != 1:
        raise exception.NotFound(
            "%s join token id starts with %r: give more of it (node-token list "
            "shows them)" % ("no" if not rows else "more than one", token_id))
    rows[0].revoked = True
    return rows[0]


def _bearer(header):
    scheme, _, value = (header or "").partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise exception.Unauthorized(
            "joining needs a join token: set [node_agent] registration_token to "
            "what mec-conpaas-manage node-token create printed")
    # The node sends the secret only; accept the whole token too.
    return value.rpartition(SEPARATOR)[2]


def find_token(session, header):
    try:
        secret = _bearer(header)
    except exception.Unauthorized:
        return None
    return session.scalar(select(models.JoinToken).where(
        models.JoinToken.secret_hash == auth.digest(secret)))


def consume(session, header):
    """The join token of this request, counted as used; 401 saying why not."""
    row = session.scalar(select(models.JoinToken).where(
        models.JoinToken.secret_hash == auth.digest(_bearer(header))))
    if row is None:
        raise UnknownJoinToken(
            "unknown join token: create one on the master with mec-conpaas-manage "
            "node-token create and put it in registration_token")
    state = token_view(row)["state"]
    if state != "valid":
        raise exception.Unauthorized(
            "join token %s is %s%s: create a new one with mec-conpaas-manage "
            "node-token create" % (row.id[:8], state, " (it expired at %s UTC)"
                                   % row.expires_at if state == "expired" else ""))
    row.uses += 1
    return row


def issue_credential(session, node_id):
    """The node's own credential; replaces any it had (a re-join)."""
    revoke_credentials(session, node_id)
    return auth.issue(session, "node", NODE_USER + node_id)


def revoke_credentials(session, node_id):
    return session.execute(delete(models.Token).where(
        models.Token.user == NODE_USER + node_id)).rowcount


def bound_node(ctx):
    """The node id a caller's credential is bound to, or None (an admin, or
    a deployment-wide node token from before join tokens)."""
    if ctx.role == "node" and ctx.user.startswith(NODE_USER):
        return ctx.user[len(NODE_USER):]
    return None


def check_own(ctx, node_id):
    bound = bound_node(ctx)
    if bound is not None and bound != node_id:
        LOG.warning("node credential of %s (token %s) used for node %s: refused",
                    bound, ctx.token_id, node_id)
        raise exception.Forbidden(
            "this node credential belongs to node %s: a node registers and "
            "heartbeats only itself" % bound)


def validate_join(body):
    """The join request's fields, checked before anything is stored."""
    identity, name, node_id = body.get("identity"), body.get("name"), body.get("id")
    if not isinstance(identity, str) or not IDENTITY_RE.fullmatch(identity):
        raise exception.BadRequest(
            "identity must be 1-128 printable characters without spaces (the "
            "Pi's serial or a MAC; [join] identity)")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", name):
        raise exception.BadRequest(
            "name must be 1-64 lowercase letters, digits and '-' (the node's host "
            "name; [node_agent] node_name)")
    if not isinstance(node_id, str) or not NODE_ID_RE.fullmatch(node_id):
        raise exception.BadRequest("id must be the node's UUID")
    return identity, name, node_id


def join(session, pools, header, body, agent_cert=None, shared=False):
    """A node joins: token checked and counted, allocation made or found
    again (same identity, same allocation and id), its own credential
    issued, and, with ``agent_cert`` (node id -> {"cert", "key"} or None),
    the certificate its agent API serves.  ``shared``: its fixed instance
    network is one several nodes share (``allocation.record``).  Returns the
    answer for the node."""
    identity, name, node_id = validate_join(body)
    token = consume(session, header)
    alloc = session.get(models.NodeAllocation, identity)
    if alloc is not None and alloc.node_id:
        node_id = alloc.node_id  # a re-flashed Pi keeps its node
    clash = session.scalar(select(models.Node).where(models.Node.name == name))
    if clash is not None and clash.id != node_id:
        raise exception.Conflict(
            "node name %r is already used by %s (MAC %s): give this node another "
            "host name, or remove the other node (mec-conpaas node delete %s)"
            % (name, clash.hostname, clash.mac, name))
    if body.get("instance_network"):  # fixed by its deployment: recorded
        alloc = allocation.record(session, pools, node_id, name,
                                  body["instance_network"], body.get("client_network"),
                                  identity=identity, shared=shared)
    else:
        alloc = allocation.allocate(session, pools, identity, node_id, name)
    credential = issue_credential(session, node_id)
    LOG.info("node %s (%s) joined with join token %s as %s", name, identity,
             token.id[:8], node_id)
    answer = {"id": node_id, "credential": credential,
              "allocation": allocation.view(alloc)}
    cert = agent_cert(node_id) if agent_cert else None
    if cert:
        answer["agent_certificate"] = cert
    return answer
