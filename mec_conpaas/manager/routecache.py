"""Routes in a heartbeat answer only when the node does not have them yet.

Every node agent installs routes to every other node's subnets
(manager/allocation.py ``routes``).  Sending that list in each heartbeat
answer made each answer, and the manager's work for it, grow with the
fleet: at 1,000 nodes, 2,000 routes (~100 kB of JSON read from the store
and encoded) for each of 500 heartbeats a second.  So the list has a
version (a digest of it, the same on every manager process and restart):
an agent echoes the version it last installed (``routes_version`` in its
heartbeat body) and the answer carries the routes only when that is not the
current one.  An agent that sends no version (one of before this) gets them
every time, as before.

The whole fleet's list is computed once and kept until a committed change
to a node's name, address or instance network, or to an allocation, and
at most ``MAX_AGE`` seconds (a change made by another process: the
liveness receiver never touches these columns; ``mec-conpaas-manage``
might).  At 1,000 nodes computing the list costs tens of milliseconds:
every 5 s that was a few % of a core, so it is every 30 s.

The list is also encoded once per version: every node joining changes
it, so after a fleet's enrolment each node's next full report gets it
(206 answers in a 30 s window at 1,000 nodes), and encoding its 2,000
entries for each answer took ~4 ms of the manager's CPU, a third of what
it spent on 1,000 heartbeating nodes.  An answer is the encoded entries
of every node but the asker, joined (``jsonify``).
"""
import hashlib
import json
import threading
import time

import flask
from sqlalchemy import event
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from mec_conpaas.db import models
from mec_conpaas.manager import allocation
from mec_conpaas.manager import placement_view

MAX_AGE = 30.0
ROUTE_COLUMNS = ("name", "address", "instance_network")

_generation = 0


def _touches_routes(session):
    for obj in list(session.new) + list(session.deleted):
        if isinstance(obj, (models.Node, models.NodeAllocation)):
            return True
    for obj in session.dirty:
        if isinstance(obj, models.NodeAllocation):
            return True
        if isinstance(obj, models.Node):
            state = inspect(obj)
            if any(state.attrs[c].history.has_changes() for c in ROUTE_COLUMNS):
                return True
    return False


@event.listens_for(Session, "after_flush")
def _after_flush(session, _context):
    if _touches_routes(session):
        session.info["routes_changed"] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session):
    # Only once committed: a list computed from another session before the
    # commit must not be kept under the new generation.
    global _generation
    if session.info.pop("routes_changed", False):
        _generation += 1


@event.listens_for(Session, "after_rollback")
def _after_rollback(session):
    session.info.pop("routes_changed", None)


class Routes:
    """The fleet's routes and their version, for one store."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.generation = None
        self.at = None
        self.version = None
        self.rows = []
        self.encoded = []   # (node, its entry as JSON text) per row

    def current(self, session):
        with self.lock:
            if self.generation == _generation and self.clock() - self.at < MAX_AGE:
                return self.version, self.rows
            generation = _generation  # read before the store: a later change bumps it
            rows = allocation.routes(session, None)
            if self.version is None or rows != self.rows:
                self.encoded = [(r["node"], json.dumps(r, sort_keys=True)) for r in rows]
                digest = hashlib.sha256(("[%s]" % ", ".join(
                    e for _, e in self.encoded)).encode())
                self.version, self.rows = digest.hexdigest()[:16], rows
            self.generation, self.at = generation, self.clock()
            return self.version, self.rows

    def without(self, name):
        """The list but node ``name``'s entries, as JSON text."""
        return Encoded("[%s]" % ", ".join(e for n, e in self.encoded if n != name))


for_session = placement_view.PerStore(Routes)


def answer(session, node_id, known_version):
    """The routes part of node ``node_id``'s heartbeat answer: the version
    always, the routes (every other node's) only if ``known_version`` is
    not it."""
    routes = for_session(session)
    version, _rows = routes.current(session)
    out = {"routes_version": version}
    if known_version != version:
        node = session.get(models.Node, node_id)
        out["routes"] = routes.without(node.name if node is not None else None)
    return out


class Encoded(str):
    """A value that is JSON text already (``jsonify`` puts it in as it is)."""


def jsonify(**fields):
    """``flask.jsonify`` for an answer some of whose values are ``Encoded``:
    the rest is encoded as flask would, and those are spliced in."""
    done = {k: v for k, v in fields.items() if isinstance(v, Encoded)}
    if not done:
        return flask.jsonify(**fields)
    text = flask.json.dumps({k: v for k, v in fields.items() if k not in done})
    spliced = ", ".join("%s: %s" % (json.dumps(k), v) for k, v in done.items())
    text = text[:-1] + (", " if text != "{}" else "") + spliced + "}"
    return flask.current_app.response_class(text + "\n", mimetype="application/json")
