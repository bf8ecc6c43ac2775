"""The service layer: the decisions behind the API's calls.

Like nova's ``compute/api.py`` under its ``api/``: the REST layer
authenticates, validates what it was sent and records the outcome; what
to do is decided here, from the store and the policies, so the API and
the workflows share one answer: which node may host instances, whether
there is room, which endpoint port a new service gets, which node is its
home, how a drain moves instances, whether this cloud's driver can do an
operation at all, and where logs come from.  Every refusal is an
exception whose message says what to change; none leaves anything done.
"""
from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.drivers import base
from mec_conpaas.manager import engine as engine_mod
from mec_conpaas.manager import inventory
from mec_conpaas.policies import farcloud
from mec_conpaas.policies import placement


class Services:

    def __init__(self, cluster):
        self.cluster = cluster
        self.conf = cluster.conf

    @property
    def driver(self):
        return self.cluster.driver

    def instance_memory_mb(self, service_type):
        """A flink instance is a JVM: it gets its own (larger) limit."""
        if service_type == "flink":
            return self.conf.manager.flink_instance_memory_mb
        return self.conf.manager.instance_memory_mb

    def instance_cpus(self, service_type):
        if service_type == "flink":
            return self.conf.manager.flink_instance_cpus
        return self.conf.manager.instance_cpus

    # -- operations --------------------------------------------------------
    def require(self, kind):
        """FeatureNotSupported (409) unless the driver can do ``kind``."""
        base.require(self.driver, kind)

    def start(self, session, kind, svc, state, allowed=None, action="changed",
              **params):
        """Store an operation that holds ``svc``, once the driver is known
        to support it (engine.new_operation for the rest)."""
        self.require(kind)
        return engine_mod.new_operation(session, kind, svc, state, allowed, action,
                                        **params)

    # -- nodes -------------------------------------------------------------
    def node(self, session, name):
        """A node by name or id, its up/down state current."""
        nodes = self.cluster.nodes(session)
        for n in nodes:
            if name in (n.name, n.id):
                return n
        raise exception.NotFound("no node named %r; known nodes: %s" % (
            name, ", ".join(n.name for n in nodes) or "none"))

    @staticmethod
    def disabled_message(node):
        return "node %s is disabled%s: choose another node or `mec-conpaas " \
               "node enable %s`" % (node.name, " (%s)" % node.disabled_reason
                                    if node.disabled_reason else "", node.name)

    def host(self, session, name):
        """A node new instances may go to: up, able to host under this
        driver, enabled."""
        node = self.node(session, name)
        if node.state != "up":
            raise exception.Conflict("node %s is down (no heartbeat for %ds): "
                                     "choose another node" % (
                                         name, self.conf.manager.node_heartbeat_timeout))
        if not self.driver.node_can_host(node):
            raise exception.Conflict("node %s does not run service instances: "
                                     "choose another node" % name)
        if node.disabled:
            raise exception.Conflict(self.disabled_message(node))
        cloud = inventory.host_of(self.driver.node_inventory(), node)
        if cloud is not None and not cloud["up"]:
            raise exception.Conflict(
                "node %s's compute host is down or disabled in the cloud (nova): "
                "choose another node, or have the cloud admin enable its compute "
                "service" % name)
        return node

    # -- capacity and placement ----------------------------------------------
    def require_slots(self, session, count, message, node=None):
        """InsufficientCapacity with ``message`` (``{free}``: the free
        slots, ``{nodes}``: each node's, or why it has none) unless the
        hosting nodes (or ``node``) have ``count`` free instance slots."""
        capacity = self.cluster.capacity(session)
        free = self.cluster.free_slots(session, node, capacity)
        if count > free:
            raise exception.InsufficientCapacity(message.format(
                free=free, nodes=placement.describe(
                    {n: v for n, v in capacity.items() if node is None or n == node})))

    def place(self, session, count, near, only=None, exclude=(), need=None):
        """Nodes for ``count`` new instances: on ``only`` if named, else the
        least loaded among the nearest to ``near`` (placement.place), never
        a node that is down, disabled or the driver cannot host; with
        ``need`` (cpus, memory_mb), only where that size fits."""
        capacity = self.cluster.capacity(session)
        home = only or near
        dist = self.cluster.distances(list(capacity), [home] if home else [])
        if only:
            capacity = {n: v for n, v in capacity.items() if n == only}
        return farcloud.place(count, home, capacity, dist,
                              farcloud.cloud_nodes(self.cluster.topology), exclude,
                              need=need)

    @staticmethod
    def size(session, service_id):
        """(cpus, memory_mb) a new instance of the service gets."""
        svc = session.get(models.Service, service_id)
        return (svc.cpus, svc.memory_mb) if svc else None

    def admit(self, session, node_name, count, need, priority):
        """ENORM's admission of a new service's ``count`` instances of
        ``need`` = (cpus, memory_mb) at ``priority``: ``(home, {instance:
        target}, pinned)``, the evictions of lower priorities that make
        room on the home (none if it fits somewhere).  ``pinned``: every
        instance goes to the home, the ``node_name`` asked for (all
        ``count`` fit there, or the evictions make room for all of them),
        which the create keeps to (CreateService: a create admitted on an
        access point must not spread to the cloud node meanwhile).
        InsufficientCapacity, with the policy's reason, when neither room
        nor priority allows."""
        from mec_conpaas.manager import qos
        if node_name is None:
            try:
                return self.place(session, count, None, need=need)[0], {}, False
            except exception.InsufficientCapacity:
                candidates = sorted(qos.view(session, self.cluster))
        else:
            try:
                self.place(session, count, node_name, only=node_name, need=need)
                return node_name, {}, True
            except exception.InsufficientCapacity:
                candidates = [node_name]
            try:  # not all on the node, but one: the rest near it, as
                # placement spreads them (ENORM's check is on the node)
                self.place(session, 1, node_name, only=node_name, need=need)
                self.place(session, count, node_name, need=need)
                return node_name, {}, False
            except exception.InsufficientCapacity:
                pass
        reasons = []
        for name in candidates:
            if not placement.placeable(self.cluster.capacity(session).get(
                    name, {"up": False})):
                continue
            decision = qos.admit(session, self.cluster, name, need[0] * count,
                                 need[1] * count, priority)
            if decision.admit:
                return name, decision.evict, bool(decision.evict) and \
                    name == node_name
            reasons.append(decision.reason)
        raise exception.InsufficientCapacity(
            "not admitted: %s; lower the count or the size, raise --priority, "
            "or add nodes" % ("; ".join(reasons) or "no up node has room"))

    def choose_home(self, session, node_name=None):
        """A new service's home: the node asked for, else the one placement
        picks for its first instance (the least loaded, nearest first)."""
        if node_name:
            return self.host(session, node_name).name
        try:
            return self.place(session, 1, None)[0]
        except exception.InsufficientCapacity:
            raise exception.InsufficientCapacity(
                "no node is up, enabled and has a free instance slot: add or "
                "enable a node, or free a slot") from None

    def allocate_port(self, session):
        """The lowest endpoint port no service has (the store's unique
        constraint settles a race)."""
        used = set(session.scalars(select(models.Service.port)))
        port = next((p for p in range(self.conf.manager.service_port_min,
                                      self.conf.manager.service_port_max + 1)
                     if p not in used), None)
        if port is None:
            raise exception.Conflict("all endpoint ports are in use: raise "
                                     "[manager] service_port_max")
        return port

    # -- per operation -------------------------------------------------------
    def check_create(self, session, count, node_name=None):
        if node_name:
            self.host(session, node_name)
        self.require_slots(session, count, "count %d is above the {free} free "
                           "instance slots of the up nodes ({nodes})" % count)

    def check_scale(self, session, svc, count, node_name=None):
        """The active instance count now (the operation's ``previous``)."""
        current = len([i for i in svc.instances if i.state == "ACTIVE"])
        if node_name:
            self.host(session, node_name)
        if count > current:
            self.require_slots(session, count - current,
                               "count %d needs %d more instance(s) but the up nodes "
                               "have {free} free slot(s) ({nodes})" % (count, count - current),
                               node_name)
            # ... and room for their size, each node's reserve kept
            self.place(session, count - current, svc.home_node, only=node_name,
                       need=(svc.cpus, svc.memory_mb))
        return current

    def check_migrate(self, session, svc, target):
        self.require("migrate")
        self.host(session, target)
        on_home = [i for i in svc.instances
                   if i.state == "ACTIVE" and i.node_name == svc.home_node]
        if svc.home_node == target:
            raise exception.Conflict("service %s is already on %s: choose "
                                     "another target node" % (svc.name, target))
        if not on_home:
            raise exception.Conflict("service %s has no instance on %s to "
                                     "migrate" % (svc.name, svc.home_node))
        cap = self.cluster.capacity(session)[target]
        if cap["max_instances"] - cap["used"] < len(on_home):
            raise exception.InsufficientCapacity(
                "node %s has %d free slot(s), %d needed" % (
                    target, cap["max_instances"] - cap["used"], len(on_home)))

    def check_start(self, session, svc):
        """How many instances a stopped service gets back."""
        self.require("start")
        count = self.cluster.saved_count(svc.id)
        self.require_slots(session, count, "service %s had %d instance(s) but the up "
                           "nodes have {free} free slot(s) ({nodes}): free some (scale or stop "
                           "other services) or add nodes, then retry" % (svc.name, count))
        return count

    def plan_drain(self, session, node, tenants):
        """``(services on node, {service id: drain params})``: a target for
        every instance on ``node``; Conflict, having planned nothing, when
        a service there is busy, the node is down or the others lack room.
        ``tenants``: ``{id: name}``, to name whose services are busy."""
        svcs = list(session.scalars(select(models.Service).where(
            models.Service.id.in_(select(models.Instance.service_id).where(
                models.Instance.node_name == node.name)))
            .order_by(models.Service.name, models.Service.id)))
        busy = ["%s (tenant %s) is %s" % (v.name, tenants.get(v.tenant_id), v.state)
                for v in svcs if v.state != "RUNNING" or v.operation_id]
        if busy:
            raise exception.Conflict(
                "node %s was not drained, nothing was changed: service %s; "
                "retry the drain when their operations end (an ERROR "
                "service must be deleted by its owner first)" % (
                    node.name, ", ".join(busy)))
        if svcs:
            self.require("drain")
            if node.state != "up":
                raise exception.Conflict(
                    "node %s is down: its instances cannot be moved make-"
                    "before-break; bring its node agent back, then retry" % node.name)
        moving = [{"id": v.id, "home": v.home_node,
                   "instances": [i.id for i in v.instances
                                 if i.node_name == node.name and i.state == "ACTIVE"]}
                  for v in svcs]
        plan = placement.evacuate(
            node.name, [m for m in moving if m["instances"]],
            self.cluster.capacity(session),
            self.cluster.distances([n.name for n in self.cluster.nodes(session)]))
        return svcs, plan

    # -- reads -----------------------------------------------------------
    def logs(self, service_id):
        """Each instance's log through the driver; an instance whose node
        does not answer says why instead (no store session is held while
        the nodes are asked)."""
        self.require("logs")
        with session_scope() as s:
            svc = s.get(models.Service, service_id)
            targets = [(i.id, i.node_name, self.cluster.node_ref(s, i.node_name))
                       for i in (svc.instances if svc else ())]
        out = []
        for iid, node, ref in targets:
            try:
                text = self.driver.logs(ref, iid)
            except exception.NodeError as e:
                text = "(unavailable: %s)" % e.message
            out.append({"instance": iid, "node": node, "log": text})
        return out
