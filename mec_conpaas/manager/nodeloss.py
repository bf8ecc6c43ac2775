"""Lost nodes: when to give up waiting for a node and re-place its
services' instances elsewhere.

A node is *down* after ``[manager] node_heartbeat_timeout`` without a
heartbeat: nothing new goes there, but what runs there is left alone, as a
node that drops off the Wi-Fi backbone for a few seconds usually comes
back with its containers still running.  It is *lost* after
``node_lost_grace``: without a heartbeat for that long, or with its node
agent not answering the manager for that long (a node that heartbeats but
cannot be reached cannot be managed either).  Each RUNNING service with an
ACTIVE instance on a lost node then gets a ``heal`` operation
(``workflows.HealService``), started here like an API call's: it claims
the service, so it never runs beside another operation on it.

Pure decisions (:func:`lost`) are kept apart from the probes and the store.
"""
import concurrent.futures
import datetime
import logging

from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import engine as engine_mod

LOG = logging.getLogger(__name__)
PROBE_TIMEOUT = 5


def lost(nodes, now, started, grace, heartbeat_timeout, unreachable):
    """Which nodes are lost, and why.

    ``nodes``: ``{name: last heartbeat}``; ``unreachable``: ``{name: (since,
    error)}`` for nodes whose agent has not answered since then.  Time
    before ``started`` (this manager's start) is not counted: the manager
    being away is no evidence against the nodes.  Returns ``{name:
    reason}``.
    """
    if not grace:
        return {}
    limit = datetime.timedelta(seconds=max(grace, heartbeat_timeout))
    out = {}
    for name, beat in nodes.items():
        silent = now - max(beat, started)
        if silent >= limit:
            out[name] = "no heartbeat for %d s" % silent.total_seconds()
            continue
        since, error = unreachable.get(name, (None, None))
        if since is not None and now - max(since, started) >= limit:
            out[name] = "node agent not answering for %d s (%s)" % (
                (now - max(since, started)).total_seconds(), error)
    return out


def agent_error(ref):
    """None if the node agent answers its health check, else why not."""
    try:
        ref.agent.health(timeout=PROBE_TIMEOUT)
        return None
    except exception.NodeError as e:
        return e.message


class NodeLoss:

    def __init__(self, cluster, engine):
        self.cluster = cluster
        self.engine = engine
        self.opts = cluster.conf.manager
        self.started = models.utcnow()
        self.unreachable = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="probe")

    def probe(self, refs):
        """Ask each node agent for its health; remember since when each
        one has not been answering."""
        futures = {ref.name: self._pool.submit(agent_error, ref) for ref in refs}
        for name, fut in futures.items():
            error = fut.result()
            if error is None:
                if self.unreachable.pop(name, None):
                    LOG.warning("node agent of %s answers again", name)
            elif name not in self.unreachable:
                LOG.warning("node agent of %s is not answering: %s", name, error)
                self.unreachable[name] = (models.utcnow(), error)

    def check(self):
        """Start a ``heal`` for every service a lost node holds instances
        of; returns the operations started."""
        grace = self.opts.node_lost_grace
        if not grace:
            return []
        with session_scope() as s:
            hosting = set(s.scalars(select(models.Instance.node_name).where(
                models.Instance.state == "ACTIVE",
                models.Instance.service_id.is_not(None))))
            nodes = [n for n in self.cluster.nodes(s) if n.name in hosting]
            beats = {n.name: n.last_heartbeat for n in nodes}
            refs = [self.cluster.ref(n) for n in nodes if n.state == "up"]
        self.probe(refs)
        for name in set(self.unreachable) - {r.name for r in refs}:
            del self.unreachable[name]  # down or empty now: heartbeats decide
        gone = lost(beats, models.utcnow(), self.started, grace,
                    self.opts.node_heartbeat_timeout, self.unreachable)
        if not gone:
            return []
        started = []
        with session_scope() as s:
            sids = list(s.scalars(select(models.Instance.service_id).where(
                models.Instance.state == "ACTIVE",
                models.Instance.node_name.in_(list(gone)),
                models.Instance.service_id.is_not(None)).distinct()))
        for sid in sids:
            op_id = self._start_heal(sid, gone, grace)
            if op_id:
                started.append(op_id)
                self.engine.submit(op_id)
        return started

    def _start_heal(self, service_id, gone, grace):
        try:
            with session_scope() as s:
                svc = s.get(models.Service, service_id)
                # Only RUNNING services, no operation holding them: a
                # STOPPED one has no instance to re-place (its state is
                # saved on the manager), and a service being stopped,
                # started, scaled, ... is healed after its operation, if
                # its instances are still on the lost node then.
                if svc is None or svc.state != "RUNNING" or svc.operation_id:
                    return None
                recent = s.scalar(select(models.Operation.id).where(
                    models.Operation.service_id == service_id,
                    models.Operation.kind == "heal",
                    models.Operation.state == "FAILED",
                    models.Operation.updated_at > models.utcnow()
                    - datetime.timedelta(seconds=grace)).limit(1))
                if recent:
                    return None  # tried within the grace: wait another one
                nodes = sorted({i.node_name for i in svc.instances
                                if i.state == "ACTIVE" and i.node_name in gone})
                if not nodes:
                    return None  # changed since the query above
                op = engine_mod.new_operation(
                    s, "heal", svc, "ADAPTING", ("RUNNING",), "healed",
                    nodes={n: gone[n] for n in nodes})
                LOG.warning("service %s: node(s) %s lost (%s): re-placing its "
                            "instances (operation %s)", svc.name, ", ".join(nodes),
                            "; ".join(gone[n] for n in nodes), op.id)
                return op.id
        except exception.Conflict as e:
            LOG.info("heal of %s deferred: %s", service_id, e.message)
            return None
