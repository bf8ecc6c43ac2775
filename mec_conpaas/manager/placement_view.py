"""The manager's capacity view: what placement and the QoS policies
observe, kept in memory instead of read from the store at each decision.

Placement, admission and the auto-scaling round need, per node, its
capacity and reserve (its last report), its committed instances and their
sizes, and whether it is up.  Reading that from the store at every
decision meant loading every node row (its report included) and every
instance row: at 1,000 nodes ~39 ms of CPU per decision (seed 002's peer
selection took 586 ms; the issue's target is 10 ms).  Most of it did not
change between two decisions: a node's report changes at its next full
report, its instances when an operation commits.

So the view is a cache of those rows, with a version, like
``routecache``: built from the store on first use (a manager start), then
changed by every committed session of this process that adds, changes or
deletes a node, instance or service (SQLAlchemy's flush and commit
events: an HTTP heartbeat's report, a registration, a create, a delete, a
resize).  The store stays the source of truth:

* what other processes write is read back: the liveness receiver (its own
  process) writes nodes' ``last_heartbeat`` and ``state``, and the node
  monitor marks nodes down with a bulk UPDATE, so those two columns (only
  those: no report is decoded) are re-read at most every ``BEATS_S``;
* the whole view is rebuilt at most every ``MAX_AGE`` seconds (a change
  made by ``mec-conpaas-manage`` or another manager process), and after a
  bulk UPDATE or DELETE of a node, instance or service;
* a decision inside a session that has changed rows not yet committed sees
  them too (``current`` flushes the session and lays its changes over the
  committed view), as a query in that session would.

The view's rows are plain records with the attributes the policies and
drivers read of a store row (``max_instances``, ``container_backend``,
``report``...), so ``driver.node_can_host`` and ``qos.of`` take them as
they are.  Nothing may change a record in place: a change replaces it.
"""
import threading
import time
import weakref

from sqlalchemy import Delete
from sqlalchemy import Update
from sqlalchemy import event
from sqlalchemy import select
from sqlalchemy.orm import Session

from mec_conpaas.db import models
from mec_conpaas.policies import qos as qos_policy

MAX_AGE = 30.0   # s: a change from another process is seen within this
BEATS_S = 1.0    # s: heartbeats the liveness receiver wrote, within this


class Rec:
    """A store row's values at one commit (read-only by convention)."""
    __slots__ = ()

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    @classmethod
    def of(cls, obj):
        return cls(**{k: getattr(obj, k, None) for k in cls.__slots__})

    def replace(self, **kw):
        return type(self)(**{k: kw.get(k, getattr(self, k)) for k in self.__slots__})

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join(
            "%s=%r" % (k, getattr(self, k)) for k in self.__slots__ if k != "report"))


class NodeRec(Rec):
    __slots__ = ("id", "name", "hostname", "max_instances", "disabled",
                 "container_backend", "state", "last_heartbeat", "report")


class InstanceRec(Rec):
    __slots__ = ("id", "node_name", "service_id", "cpus", "memory_mb", "state",
                 "created_at")


class ServiceRec(Rec):
    __slots__ = ("id", "name", "cpus", "memory_mb") + qos_policy.FIELDS


KINDS = {models.Node: ("nodes", NodeRec), models.Instance: ("instances", InstanceRec),
         models.Service: ("services", ServiceRec)}
TABLES = {m.__table__.name for m in KINDS}

_generation = 0          # bumped by a bulk change: every view rebuilds


# -- what a session changed ------------------------------------------------------
def _changes(session):
    return session.info.setdefault("placement_view", {})


@event.listens_for(Session, "after_flush")
def _after_flush(session, _context):
    changed = None
    for objs, gone in ((session.new, False), (session.dirty, False),
                       (session.deleted, True)):
        for obj in objs:
            kind = KINDS.get(type(obj))
            if kind is None:
                continue
            if changed is None:
                changed = _changes(session)
            # the latest flush's values win (a row flushed twice)
            changed[(kind[0], obj.id)] = None if gone else kind[1].of(obj)


@event.listens_for(Session, "do_orm_execute")
def _bulk(state):
    """A bulk UPDATE/DELETE of a node, instance or service (the node
    monitor's, an operation's claim) changes rows the events above never
    see: every view rebuilds after it commits (a claim changes no column
    the view keeps, so it is left out)."""
    stmt = state.statement
    if not isinstance(stmt, (Update, Delete)):
        return
    table = getattr(stmt, "table", None)
    if getattr(table, "name", None) not in TABLES:
        return
    columns = {getattr(c, "key", c) for c in getattr(stmt, "_values", None) or {}} \
        if isinstance(stmt, Update) else None
    if table.name == "services" and columns is not None and columns <= {
            "operation_id", "state", "error"}:
        return
    if table.name == "nodes" and columns is not None and columns <= {
            "state", "last_heartbeat"}:
        state.session.info["placement_view_beats"] = True
        return
    state.session.info["placement_view_bulk"] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session):
    global _generation
    changed = session.info.pop("placement_view", None)
    beats = session.info.pop("placement_view_beats", False)
    if session.info.pop("placement_view_bulk", False):
        _generation += 1
        return
    if not (changed or beats):
        return
    try:
        engine = session.get_bind()
    except Exception:  # noqa: BLE001 - a session without a bind has no view
        return
    view = _views.get(engine)
    if view is not None:
        view.apply(changed or {}, beats)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session):
    for k in ("placement_view", "placement_view_beats", "placement_view_bulk"):
        session.info.pop(k, None)


# -- the view --------------------------------------------------------------------
class Snapshot:
    """One consistent state of the view: ``nodes`` ``{name: NodeRec}``,
    ``by_node`` ``{node name: {instance id: InstanceRec}}``, ``services``
    ``{id: ServiceRec}``, and the ``version`` it is at.  ``memo``: what
    readers derive per node, kept across snapshots (see ``derived``)."""
    __slots__ = ("version", "nodes", "by_node", "services", "memo")

    def __init__(self, version, nodes, by_node, services, memo=None):
        self.version, self.nodes = version, nodes
        self.by_node, self.services = by_node, services
        self.memo = {} if memo is None else memo

    def derived(self, what, name, inputs, make):
        """``make()``, remembered per (``what``, node) until one of its
        ``inputs`` changes: records and tables are replaced, never changed
        in place, so an input that is the same object is the same value.
        A node's policy view is rebuilt only when its report, its instances
        or the services change, not at every decision."""
        hit = self.memo.get((what, name))
        if hit is not None and len(hit[0]) == len(inputs) and all(
                a is b for a, b in zip(hit[0], inputs)):
            return hit[1]
        value = make()
        self.memo[(what, name)] = (inputs, value)
        return value

    def instances(self):
        for insts in self.by_node.values():
            yield from insts.values()


class View:
    """The capacity view of one store (engine)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.generation = None
        self.built_at = self.beats_at = None
        self.version = 0
        self.nodes = {}       # id -> NodeRec
        self.instances = {}   # id -> InstanceRec
        self.services = {}    # id -> ServiceRec
        self.by_node = {}     # node name -> {instance id: InstanceRec}
        self.memo = {}        # Snapshot.derived
        self.rebuilds = 0

    # -- from the store ----------------------------------------------------------
    def rebuild(self, session):
        generation = _generation   # read before the store: a later change bumps it
        nt, it, st = (models.Node.__table__, models.Instance.__table__,
                      models.Service.__table__)
        nodes = {r.id: NodeRec(**r._mapping) for r in session.execute(
            select(*(nt.c[k] for k in NodeRec.__slots__)))}
        insts = {r.id: InstanceRec(**r._mapping) for r in session.execute(
            select(*(it.c[k] for k in InstanceRec.__slots__)))}
        svcs = {r.id: ServiceRec(**r._mapping) for r in session.execute(
            select(*(st.c[k] for k in ServiceRec.__slots__)))}
        by_node = {}
        for i in insts.values():
            by_node.setdefault(i.node_name, {})[i.id] = i
        self.nodes, self.instances, self.services = nodes, insts, svcs
        self.by_node = by_node
        self.memo = {}
        self.generation = generation
        self.built_at = self.beats_at = self.clock()
        self.version += 1
        self.rebuilds += 1

    def read_beats(self, session):
        """Only ``state`` and ``last_heartbeat`` of every node: what the
        liveness receiver and the node monitor write."""
        nt = models.Node.__table__
        changed = False
        for nid, state, seen in session.execute(select(nt.c.id, nt.c.state,
                                                       nt.c.last_heartbeat)):
            rec = self.nodes.get(nid)
            if rec is not None and (rec.state != state or rec.last_heartbeat != seen):
                self.nodes[nid] = rec.replace(state=state, last_heartbeat=seen)
                changed = True
        self.beats_at = self.clock()
        if changed:
            self.version += 1

    # -- from this process's commits ---------------------------------------------
    def apply(self, changed, beats=False):
        """Lay committed changes over the view.  Copy on write: a snapshot
        handed out before still holds the tables it was given."""
        with self.lock:
            if self.generation is None:
                return   # not built yet: the first use reads the store
            if changed:
                kinds = {k for k, _ in changed}
                nodes = dict(self.nodes) if "nodes" in kinds else self.nodes
                insts = dict(self.instances) if "instances" in kinds else self.instances
                svcs = dict(self.services) if "services" in kinds else self.services
                by_node = dict(self.by_node) if "instances" in kinds else self.by_node
                for (kind, key), rec in changed.items():
                    table = {"nodes": nodes, "instances": insts, "services": svcs}[kind]
                    old = table.pop(key, None)
                    if rec is not None:
                        table[key] = rec
                    if kind != "instances":
                        continue
                    if old is not None and old.node_name in by_node:
                        by_node[old.node_name] = {
                            k: v for k, v in by_node[old.node_name].items() if k != key}
                        if not by_node[old.node_name]:
                            del by_node[old.node_name]
                    if rec is not None:
                        by_node[rec.node_name] = dict(by_node.get(rec.node_name, {}),
                                                      **{key: rec})
                self.nodes, self.instances = nodes, insts
                self.services, self.by_node = svcs, by_node
            if beats:
                self.beats_at = None   # re-read at the next use
            self.version += 1

    # -- reading -------------------------------------------------------------------
    def current(self, session):
        """The view as ``session`` sees it: the committed state, kept
        current, with the session's own flushed, uncommitted changes laid
        over it."""
        if session.new or session.dirty or session.deleted:
            session.flush()   # as a query in the session would (autoflush)
        # Its connection before the lock: a holder of the lock never waits
        # on the pool for one that committing sessions (waiting on the lock
        # in apply) hold.
        session.connection()
        with self.lock:
            now = self.clock()
            if self.generation != _generation or now - self.built_at >= MAX_AGE:
                self.rebuild(session)
            elif self.beats_at is None or now - self.beats_at >= BEATS_S:
                self.read_beats(session)
            snap = Snapshot(self.version, {n.name: n for n in self.nodes.values()},
                            self.by_node, self.services, self.memo)
        own = session.info.get("placement_view")
        return overlay(snap, own) if own else snap


def overlay(snap, changed):
    """``snap`` with a session's uncommitted ``changed`` rows laid over
    it (copies only what they touch)."""
    nodes, by_node, services = snap.nodes, snap.by_node, snap.services
    copied = set()
    for (kind, key), rec in changed.items():
        if kind == "nodes":
            if "nodes" not in copied:
                nodes, _ = dict(nodes), copied.add("nodes")
            for name, n in list(nodes.items()):
                if n.id == key:
                    del nodes[name]
            if rec is not None:
                nodes[rec.name] = rec
        elif kind == "services":
            if "services" not in copied:
                services, _ = dict(services), copied.add("services")
            if rec is None:
                services.pop(key, None)
            else:
                services[key] = rec
        else:
            if "by_node" not in copied:
                by_node, _ = dict(by_node), copied.add("by_node")
            for name in list(by_node):
                if key in by_node[name]:
                    by_node[name] = {k: v for k, v in by_node[name].items() if k != key}
            if rec is not None:
                by_node[rec.node_name] = dict(by_node.get(rec.node_name, {}),
                                              **{key: rec})
    return Snapshot(snap.version, nodes, by_node, services, snap.memo)


class PerStore:
    """One ``factory()`` object per store (engine), made on first use: the
    caches of what the manager reads of its store (this view, the route
    list) belong to a store, not to the process (tests open many)."""

    def __init__(self, factory):
        self.factory = factory
        self.lock = threading.Lock()
        self.objs = weakref.WeakKeyDictionary()

    def __call__(self, session):
        engine = session.get_bind()
        with self.lock:
            obj = self.objs.get(engine)
            if obj is None:
                obj = self.objs[engine] = self.factory()
            return obj


for_session = PerStore(View)   # the view of a session's store
_views = for_session.objs


def current(session):
    return for_session(session).current(session)
