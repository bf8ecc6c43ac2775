"""Join tokens and per-node credentials.

A join token (``mec-conpaas-manage node-token create``) is
``<SHA-256 of the deployment CA>::<secret>`` (the K3s / kubeadm form): the
node checks the CA before it sends the secret.  It expires and can be
limited to N joins; only the secret's SHA-256 is stored.  Joining gives the
node its allocation and its OWN credential (a ``node`` token bound to its
id): that one registers and heartbeats this node only, and an admin can
revoke it (``mec-conpaas node credential revoke NODE``).

A join token does not let its holder become a node that already exists:
the node's identity (serial, MAC) and id are self-reported, so a re-join of
a known node needs that node's current credential.  A node that lost it (a
re-flashed card) is refused until the admin revokes the old credential,
which is the approval: as K3s refuses a node whose node-password does not
match until ``kubectl delete node``, and kubeadm a join under an existing
node name until the node is deleted.  Revoking, not deleting, keeps the
node's allocation, instances and history for the new card.
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
# A credential the node chose (secrets.token_urlsafe(32) is 43 characters).
CREDENTIAL_RE = re.compile(r"^[A-Za-z0-9_-]{43,128}$")


class UnknownJoinToken(exception.Unauthorized):
    code = "unknown_join_token"


class NodeTaken(exception.Conflict):
    """A join token used to join as a node that still holds its credential."""
    code = "node_identity_taken"


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


def issue_credential(session, node_id, secret=None):
    """The node's own credential; replaces any it had (a re-join).
    ``secret``: the one the node chose (K3s's node password: a join
    repeated because its answer was lost proves itself with it)."""
    revoke_credentials(session, node_id)
    if secret is None:
        return auth.issue(session, "node", NODE_USER + node_id)
    if session.scalar(select(models.Token.id).where(
            models.Token.secret_hash == auth.digest(secret))) is not None:
        raise exception.BadRequest("the credential this node chose is in use: choose "
                                   "another (a new random one)")
    session.add(models.Token(secret_hash=auth.digest(secret), role="node",
                             user=NODE_USER + node_id))
    return secret


def _credential_of(session, header):
    """The node id whose current credential ``header`` carries, or None
    (a join token, or nothing the manager knows)."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    row = session.scalar(select(models.Token).where(
        models.Token.secret_hash == auth.digest(value.strip())))
    if row is None or row.role != "node" or not row.user.startswith(NODE_USER):
        return None
    return row.user[len(NODE_USER):]


def _has_credential(session, node_id, secret=None):
    """Whether the node holds a credential (``secret``: that one)."""
    query = select(models.Token.id).where(models.Token.user == NODE_USER + node_id)
    if secret is not None:
        query = query.where(models.Token.secret_hash == auth.digest(secret))
    return session.scalar(query.limit(1)) is not None


def _refuse_takeover(session, identity, node_id, claimed_by_identity, token):
    """NodeTaken when ``node_id`` still holds a credential: a join token
    alone must not make its holder that node."""
    if not _has_credential(session, node_id):
        return  # new, or its credential revoked by the admin (the approval)
    node = session.get(models.Node, node_id)
    alloc = allocation.of_node(session, node_id)
    name = node.name if node else (alloc.node_name if alloc else None) or node_id
    LOG.warning("join as node %s (%s) with join token %s refused: the node holds "
                "a credential", name, identity, token.id[:8])
    what = ("this node's identity %s is already node %s" % (identity, name)
            if claimed_by_identity else "node id %s is already node %s" % (node_id, name))
    raise NodeTaken(
        "%s, which holds its own credential: a node joins again only with that "
        "credential. If this is node %s with a new or re-flashed card, the admin "
        "approves it on the master with 'mec-conpaas node credential revoke %s' and "
        "this node joins at its next try; otherwise give this node another "
        "identity ([join] identity) and id" % (what, name, name))


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
    chosen = body.get("credential")
    if chosen is not None and (not isinstance(chosen, str)
                               or not CREDENTIAL_RE.fullmatch(chosen)):
        raise exception.BadRequest(
            "credential (the one this node chose) must be 43-128 characters of "
            "A-Z, a-z, 0-9, '-' and '_' (secrets.token_urlsafe(32))")
    return identity, name, node_id


def join(session, pools, header, body, agent_cert=None, shared=False):
    """A node joins: token checked and counted, allocation made or found
    again (same identity, same allocation and id), its own credential
    issued, and, with ``agent_cert`` (node id -> {"cert", "key"} or None),
    the certificate its agent API serves.  ``shared``: its fixed instance
    network is one several nodes share (``allocation.record``).  Returns the
    answer for the node.

    ``header`` carries a join token, or the node's own current credential
    (a node joining again: nothing consumed).  With a join token, a node
    that still holds a credential cannot be joined as (NodeTaken, 409)
    unless the body's ``credential`` (the one the node chose and keeps
    until it has the answer) is that credential: the same node repeating a
    join whose answer it lost.  A refusal raises before anything is
    written, so the caller's rollback leaves the node's record, credential
    and certificate as they were."""
    identity, name, node_id = validate_join(body)
    own = _credential_of(session, header)
    token = None if own else consume(session, header)
    alloc = session.get(models.NodeAllocation, identity)
    known = alloc is not None and alloc.node_id is not None
    if known:
        node_id = alloc.node_id  # a re-flashed Pi keeps its node
    elif own is not None:
        node_id = own  # the node's identity changed: its credential says who it is
    if own is not None and own != node_id:
        LOG.warning("node credential of %s used to join as node %s (%s): refused",
                    own, node_id, identity)
        raise exception.Forbidden(
            "this node credential belongs to node %s, not to the node of identity "
            "%s: a node joins again only as itself" % (own, identity))
    chosen = body.get("credential")
    if token is not None and not (chosen and _has_credential(session, node_id, chosen)):
        _refuse_takeover(session, identity, node_id, known, token)
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
    credential = issue_credential(session, node_id, chosen)
    LOG.info("node %s (%s) joined with %s as %s", name, identity,
             "join token %s" % token.id[:8] if token else "its own credential", node_id)
    answer = {"id": node_id, "credential": credential,
              "allocation": allocation.view(alloc)}
    cert = agent_cert(node_id) if agent_cert else None
    if cert:
        answer["agent_certificate"] = cert
    return answer
