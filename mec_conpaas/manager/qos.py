"""The manager's side of the QoS policies: what they observe, and their
decisions turned into operations.

The observed state is the store (instances, their sizes, their services'
QoS spec) and the node agents' last reports (capacity, reserve, each
instance's measured latency); the policies (policies/admission.py,
autoscale.py, eviction.py, replica.py) are pure functions of it.  Every
decision becomes an ordinary operation claiming its service, with the
policy's reason as its step (``operation list``):

* ``resize``: grow or shrink one container by a unit (auto-scaling);
* ``evict``: a make-before-break migration of the lowest-priority
  service's instance off a node that is short, to another access point;
* ``scale``: a new replica where replica choice puts it (PiCasso).

Nothing here knows which cloud driver runs: sizes change through the node
agent (which acts on the container's cgroups whether the lxc backend or
nova made it) and moves through the migrate workflow.
"""
import logging
import threading
import time

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import engine as engine_mod
from mec_conpaas.manager import farcloud
from mec_conpaas.manager import placement_view
from mec_conpaas.policies import admission
from mec_conpaas.policies import autoscale
from mec_conpaas.policies import capacity
from mec_conpaas.policies import qos as qos_mod
from mec_conpaas.policies import replica

LOG = logging.getLogger(__name__)


def size(inst, svc):
    """(cpus, memory_mb) an instance holds: its own once resized, else its
    service's."""
    return (inst.cpus if inst.cpus is not None else svc.cpus,
            inst.memory_mb if inst.memory_mb is not None else svc.memory_mb)


def reported(node):
    """The node's capacity as its agent last reported it, or None (an
    agent older than capacity reports: placement counts slots only)."""
    cap = (node.report or {}).get("capacity")
    return cap if cap and cap.get("cpus") and cap.get("memory_mb") else None


def view(session, cluster, default_priority=50, snap=None):
    """``{node: policy view}`` (policies/capacity.py) of every node that
    reports its capacity, with ``up``/``schedulable``, its containers from
    the store (a row exists before its container and after it, so nothing
    on a node is missed) and each one's last measured latency.

    Read from the manager's capacity view (manager/placement_view.py), not
    the store's rows: at 1,000 nodes those took most of a decision.  Each
    node's part is remembered until its report, its instances or the
    services change; callers get their own top-level dict per node (the
    policies copy ``containers`` before changing it).  ``snap``: a snapshot
    of the view the caller already has."""
    snap = snap or placement_view.current(session)
    deadline = cluster.heartbeat_deadline()
    out = {}
    for name, n in snap.nodes.items():
        entry = _node_view(snap, cluster, name, n, default_priority)[0]
        if entry is not None:
            out[name] = dict(entry, up=cluster.is_up(n, deadline))
    return out


def _node_view(snap, cluster, name, n, default_priority):
    """``(policy view without "up", its free (cpus, memory_mb))`` of one
    node, or ``(None, None)`` if it reports no capacity."""
    bucket = snap.by_node.get(name)
    return snap.derived("qos", name, (n.report, n.disabled, n.max_instances,
                                      n.container_backend, bucket, snap.services,
                                      cluster.driver, default_priority),
                        lambda: _make_node_view(snap, cluster, n, bucket or {},
                                                default_priority))


def _make_node_view(snap, cluster, n, bucket, default_priority):
    cap = reported(n)
    if cap is None:
        return None, None
    report = n.report or {}
    usage = report.get("containers") or {}
    containers = {}
    for inst in bucket.values():
        svc = snap.services.get(inst.service_id) if inst.service_id else None
        if svc is None:  # left by a deleted service: holds its size until swept
            containers[inst.id] = {"service": None, "priority": 101,
                                   "cpus": inst.cpus or 0.0,
                                   "memory_mb": inst.memory_mb or 0}
            continue
        spec = qos_mod.of(svc, default_priority)
        cpus, mem = size(inst, svc)
        containers[inst.id] = {
            "service": svc.id, "service_name": svc.name, "priority": spec.priority,
            "cpus": cpus, "memory_mb": mem, "base_cpus": svc.cpus,
            "base_memory_mb": svc.memory_mb, "state": inst.state,
            "latency_ms": (usage.get(inst.id) or {}).get("latency_ms")
            if inst.state == "ACTIVE" else None,
            "objective_ms": spec.latency_objective_ms,
            "seq": inst.created_at.timestamp() if inst.created_at else 0}
    entry = {"cpus": float(cap["cpus"]), "memory_mb": int(cap["memory_mb"]),
             "reserve_cpus": float(cap.get("reserve_cpus", 0.0)),
             "reserve_memory_mb": int(cap.get("reserve_memory_mb", 0)),
             "schedulable": not n.disabled and cluster.driver.node_can_host(n),
             "report": report, "containers": containers}
    return entry, capacity.free(entry)


def free(session, cluster, snap=None):
    """``{node: (free cpus, free memory_mb)}`` of the nodes reporting
    capacity (what placement fits sizes in)."""
    snap = snap or placement_view.current(session)
    out = {}
    for name, n in snap.nodes.items():
        got = _node_view(snap, cluster, name, n, 50)[1]
        if got is not None:
            out[name] = got
    return out


def admit(session, cluster, node_name, cpus, memory_mb, priority):
    """Admission on ``node_name`` (policies/admission.py): the Decision."""
    nodes = view(session, cluster)
    if node_name not in nodes:
        return admission.Decision(True, "%s reports no capacity" % node_name)
    # evicted: to an access point with room, else the cloud (issue 15)
    room, dist = farcloud.eviction_view(session, cluster, nodes, cluster.distances(
        list(nodes), [node_name]), node_name)
    return admission.admit(node_name, nodes[node_name], cpus, memory_mb, priority,
                           room, dist)


def start(session, services, kind, svc, reason, **params):
    """A policy's operation on ``svc``, claiming it (Conflict if busy):
    its reason is its step until it ends, and its note after."""
    services.require("migrate" if kind == "evict" else kind)
    op = engine_mod.new_operation(session, kind, svc, "ADAPTING", ("RUNNING",),
                                  "changed by a policy", reason=reason, **params)
    op.step = reason[:255]
    return op


def evict(session, services, evictions, why):
    """An ``evict`` operation for every ``{instance: target node}``; returns
    their ids.  Conflict (nothing started) if a victim's service is busy."""
    ops = []
    for iid, target in sorted(evictions.items()):
        inst = session.get(models.Instance, iid)
        svc = inst and inst.service_id and session.get(models.Service, inst.service_id)
        if not svc:
            continue
        reason = "evicted from %s to %s (priority %d): %s" % (
            inst.node_name, target, qos_mod.of(svc).priority, why)
        moves = [{"instance": iid, "to": target}]
        # The home moves only with the service's last instance there.
        left = [i for i in svc.instances if i.state == "ACTIVE" and i.id != iid
                and i.node_name == svc.home_node]
        ops.append(start(session, services, "evict", svc, reason, moves=moves,
                         **({"home": target} if svc.home_node == inst.node_name
                            and not left else {})).id)
    return ops


def wait_for(op_ids, timeout, poll=0.25):
    """Wait for operations to end; the ones that did not succeed, with why."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as s:
            ops = [s.get(models.Operation, i) for i in op_ids]
            pending = [o for o in ops if o and o.state not in engine_mod.TERMINAL]
            failed = ["%s (%s)" % (o.id, o.error) for o in ops
                      if o and o.state == "FAILED"]
        if not pending or time.monotonic() > deadline:
            return failed + ["%s did not end in %d s" % (o.id, timeout) for o in pending]
        time.sleep(poll)


class Loop:
    """The periodic auto-scaling round over every node (``[qos]
    autoscale_interval``), its decisions started as operations."""

    def __init__(self, cluster, engine, services):
        self.cluster = cluster
        self.engine = engine
        self.services = services
        self.opts = cluster.conf.qos
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(self.opts.autoscale_interval or 60):
            if not self.opts.autoscale_interval:
                continue
            try:
                self.round()
            except Exception:
                LOG.exception("auto-scaling round")

    def plan(self, session):
        """``{node: [decisions]}`` of one round (policies/autoscale.py)."""
        nodes = view(session, self.cluster, self.opts.default_priority)
        dist = self.cluster.distances(list(nodes))
        # evicted: to an access point with room, else the cloud (issue 15)
        room, evict_dist = farcloud.eviction_view(session, self.cluster, nodes, dist)
        return {name: autoscale.plan(name, node, self.opts.unit_cpus,
                                     self.opts.unit_memory_mb, self.opts.shrink_below,
                                     self.opts.max_units, room, evict_dist)
                for name, node in nodes.items() if node["up"]}, nodes, dist

    def round(self):
        """Start the round's operations; returns their ids."""
        started = []
        with session_scope() as s:
            plans, nodes, dist = self.plan(s)
        for name, decisions in plans.items():
            for d in decisions:
                try:
                    with session_scope() as s:
                        op = self._operation(s, name, d, nodes, dist)
                        op_id = op and op.id
                except exception.MecError as e:  # busy service: next round
                    LOG.info("auto-scaling %s on %s deferred: %s", d["id"], name,
                             e.message)
                    continue
                if op_id:
                    started.append(op_id)
                    self.engine.submit(op_id)
        return started

    def _operation(self, s, name, d, nodes, dist):
        inst = s.get(models.Instance, d["id"])
        svc = inst and inst.service_id and s.get(models.Service, inst.service_id)
        if not svc or inst.state != "ACTIVE" or svc.state != "RUNNING" \
                or svc.operation_id:
            return None
        if d["action"] in ("grow", "shrink"):
            return start(s, self.services, "resize", svc, d["reason"], instance=d["id"],
                         cpus=d["cpus"], memory_mb=d["memory_mb"], change=d["action"])
        if d["action"] == "evict":
            if d["to"] is None:
                LOG.warning("%s: %s", name, d["reason"])
                return None
            ops = evict(s, self.services, {d["id"]: d["to"]}, d["reason"])
            return s.get(models.Operation, ops[0]) if ops else None
        # blocked: a replica, where replica choice puts it
        spec = qos_mod.of(svc, self.opts.default_priority)
        count = len([i for i in svc.instances if i.state == "ACTIVE"])
        # Only a service that set --max adds replicas by policy (unset: an
        # operator's count, never grown behind their back).
        if spec.max_instances is None or count >= spec.max_instances:
            return None
        cpus, mem = svc.cpus, svc.memory_mb
        choice = {n: {"exhaustion": replica.exhaustion(v["report"], v["report"].get(
                      "capacity")), "fits": v["up"] and v["schedulable"]
                      and capacity.fits(v, cpus, mem)} for n, v in nodes.items()}
        target, why = replica.choose(name, choice, dist, self.opts.exhausted_above)
        if target is None:
            return None
        return start(s, self.services, "scale", svc, "%s; %s" % (d["reason"], why),
                     count=count + 1, node=target, previous=count)
