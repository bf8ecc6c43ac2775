"""Bringing services back from the far cloud, and offloading to it the
services whose objective allows it to make room for those that need the
edge (policies/farcloud.py decides; here the decisions become ``migrate``
operations with the policy's reason, started like an API call's, so one
never runs beside another operation on the service),
and the far cloud as the eviction policies' last resort
(:func:`eviction_view`)."""
import logging

from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import engine as engine_mod
from mec_conpaas.policies import farcloud
from mec_conpaas.policies import placement
from mec_conpaas.policies import qos as qos_mod

LOG = logging.getLogger(__name__)


def eviction_view(session, cluster, nodes, dist, source=None):
    """What ENORM's eviction may re-place a container on (manager/qos.py):
    ``(nodes, dist)`` narrowed to the nodes with a free instance slot (an
    access point full of slots cannot take one, whatever its cpus), with
    the cloud nodes behind every access point (farcloud.edge_first), so an
    evicted container goes to the cloud only when no access point can
    take it.  ``source``, the node being relieved, is always kept.  Each
    node kept says its ``free_slots`` (policies/eviction.py's targets take
    one per container they place there)."""
    slots = cluster.capacity(session)
    room = {n: dict(v, free_slots=placement.free_slots(slots[n]) if n in slots else 0)
            for n, v in nodes.items() if n == source or (
                n in slots and placement.free_slots(slots[n]) > 0)}
    return room, farcloud.edge_first(dist, farcloud.cloud_nodes(cluster.topology))


class FarCloud:

    def __init__(self, cluster, services, engine, mobility=None):
        self.cluster = cluster
        self.services = services
        self.engine = engine
        self.mobility = mobility  # where each service's users are

    def clouds(self):
        return farcloud.cloud_nodes(self.cluster.topology)

    def _views(self, s, svcs, nodes):
        """The policy's view of each service: where it is, its size and
        QoS, its computing latency as the node agents last measured it,
        and its users' access points (from the mobility loop)."""
        default = self.cluster.conf.qos.default_priority
        reports = {n.name: (n.report or {}).get("containers") or {} for n in nodes}
        out = []
        for svc in svcs:
            active = [i for i in svc.instances if i.state == "ACTIVE"]
            measured = [m for m in (reports.get(i.node_name, {}).get(i.id, {}).get(
                "latency_ms") for i in active) if m is not None]
            spec = qos_mod.of(svc, default)
            users = self.mobility.service_users(nodes, svc.id) if self.mobility else []
            out.append({"id": svc.id, "name": svc.name, "home": svc.home_node,
                        "on_home": len([i for i in active
                                        if i.node_name == svc.home_node]),
                        "need": (svc.cpus, svc.memory_mb), "priority": spec.priority,
                        "objective_ms": spec.latency_objective_ms,
                        "service_ms": max(measured) if measured else None,
                        "users": sorted({u["ap"] for u in users if u.get("ap")}),
                        "busy": bool(svc.operation_id) or svc.state != "RUNNING"})
        return out

    def _start(self, s, svc, target, reason):
        try:
            self.services.check_migrate(s, svc, target)
            return self.services.start(s, "migrate", svc, "ADAPTING", ("RUNNING",),
                                       "migrated", to=target, source=svc.home_node,
                                       reason=reason)
        except exception.MecError as e:
            LOG.info("service %s stays on %s: %s", svc.name, svc.home_node, e.message)
            return None

    def check(self):
        """One pass: start a migration home for every service that can
        leave a cloud node now, and, for services on the cloud that need
        the edge, the offloads that make room for them
        (policies/farcloud.py).  Returns the operation ids started."""
        clouds = self.clouds()
        if not clouds:
            return []
        opts = self.cluster.conf.policies
        started = []
        with session_scope() as s:
            svcs = {svc.id: svc for svc in s.scalars(select(models.Service))
                    if svc.state in ("RUNNING", "ADAPTING", "PROLOGUE")}
            if not any(svc.home_node in clouds for svc in svcs.values()):
                return []
            # Slots an operation in flight is placing instances on are
            # promised, however free they look (test_farcloud_evict's
            # extra migration: a create waiting for the eviction that made
            # its room lost that room to a return).
            busy = set()
            for op in s.scalars(select(models.Operation).where(
                    models.Operation.state.not_in(engine_mod.TERMINAL))):
                busy |= farcloud.promised(op.params or {})
            capacity = self.cluster.capacity(s)
            dist = self.cluster.distances(list(capacity))
            nodes = self.cluster.nodes(s, up_only=True)
            views = self._views(s, list(svcs.values()), nodes)
            wifi = float((self.cluster.topology or {}).get("wifi_latency_ms", 0) or 0)
            margin = opts.offload_margin
            plan = farcloud.returns([v for v in views if not v["busy"]], capacity,
                                    dist, clouds, busy, wifi, margin)
            users = {v["id"]: v["users"] for v in views}
            moves = [(sid, target, "far cloud: back to %s, %s" % (
                target, "nearest its users (at %s)" % ",".join(users[sid])
                if users[sid] else "the nearest with room")) for sid, target in plan.items()]
            if opts.offload_for_objective:
                moves += [(d["id"], d["to"], d["reason"]) for d in farcloud.offloads(
                    views, capacity, dist, clouds, busy | set(plan.values()), wifi,
                    margin)]
            for sid, target, reason in moves:
                svc = svcs[sid]
                op = self._start(s, svc, target, reason)
                if op is None:
                    continue
                LOG.warning("service %s moves from %s to %s: %s (operation %s)",
                            svc.name, svc.home_node, target, reason, op.id)
                started.append(op.id)
        for op_id in started:  # once stored (the session committed)
            self.engine.submit(op_id)
        return started
