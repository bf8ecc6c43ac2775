"""Bringing services back from the far cloud (policies/farcloud.py
decides; here the decisions become ``migrate`` operations, started like an
API call's, so one never runs beside another operation on the service),
and the far cloud as the eviction policies' last resort
(:func:`eviction_view`)."""
import logging

from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.policies import farcloud
from mec_conpaas.policies import placement

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

    def __init__(self, cluster, services, engine):
        self.cluster = cluster
        self.services = services
        self.engine = engine

    def clouds(self):
        return farcloud.cloud_nodes(self.cluster.topology)

    def check(self):
        """One pass: start a migration home for every service that can
        leave a cloud node now.  Returns the operation ids started."""
        clouds = self.clouds()
        if not clouds:
            return []
        started = []
        with session_scope() as s:
            svcs = [svc for svc in s.scalars(select(models.Service))
                    if svc.home_node in clouds and svc.state == "RUNNING"
                    and not svc.operation_id]
            if not svcs:
                return []
            capacity = self.cluster.capacity(s)
            dist = self.cluster.distances(list(capacity))
            plan = farcloud.returns(
                [{"id": svc.id, "home": svc.home_node,
                  "on_home": len([i for i in svc.instances if i.state == "ACTIVE"
                                  and i.node_name == svc.home_node]),
                  "need": (svc.cpus, svc.memory_mb)}
                 for svc in svcs], capacity, dist, clouds)
            for svc in svcs:
                target = plan.get(svc.id)
                if not target:
                    continue
                try:
                    self.services.check_migrate(s, svc, target)
                    op = self.services.start(s, "migrate", svc, "ADAPTING", ("RUNNING",),
                                             "migrated", to=target, source=svc.home_node)
                except exception.MecError as e:
                    LOG.info("service %s stays on %s: %s", svc.name, svc.home_node,
                             e.message)
                    continue
                LOG.warning("service %s returns from the cloud node %s to %s "
                            "(operation %s)", svc.name, svc.home_node, target, op.id)
                started.append(op.id)
        for op_id in started:  # once stored (the session committed)
            self.engine.submit(op_id)
        return started
