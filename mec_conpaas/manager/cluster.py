"""The manager's view of the edge: nodes, proximity, proxies, health.

Workflows use this; it is the only place that contacts node agents
(through the driver or their proxy API) and service agents.
"""
import concurrent.futures
import datetime
import json
import logging
import os
import threading
import time

from sqlalchemy import and_
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import update

from mec_conpaas import exception
from mec_conpaas.agents.node import joining
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.drivers import base
from mec_conpaas.drivers import nodeagent
from mec_conpaas.manager import inventory as inventory_mod
from mec_conpaas.manager import placement_view
from mec_conpaas.manager import topology as topology_mod
from mec_conpaas.policies import placement

LOG = logging.getLogger(__name__)
DISTANCE_MEMO = 64


class Cluster:

    def __init__(self, conf, driver):
        self.conf = conf
        self._agent_tls = None  # the deployment CA's context, made on first use
        self.driver = driver
        self.started = models.utcnow()  # see is_up()
        self.topology = None
        if conf.manager.topology_file:
            self.topology = topology_mod.load(conf.manager.topology_file)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="fanout")
        # Operations and the sweep push proxies: one plan at a time, so an
        # older plan never lands after a newer one.
        self._proxy_lock = threading.Lock()
        self._pushes = 0  # proxy pushes so far: a plan made before one is stale
        # Migrations routed to their held target ahead of the commit (the
        # store still says STANDBY): {old instance: new instance}, which
        # every push keeps until ``unroute``.  In memory only: a manager
        # that restarts rolls such a migration forward or back (workflows).
        self._routed = {}
        self._distances = {}  # distances()
        self._distances_lock = threading.Lock()

    # -- nodes -----------------------------------------------------------
    def heartbeat_deadline(self):
        return models.utcnow() - datetime.timedelta(
            seconds=self.conf.manager.node_heartbeat_timeout)

    def is_up(self, node, deadline=None):
        """Whether ``node`` heartbeated within the timeout.

        The manager's own downtime is not a node's silence: a node that was
        up when the manager stopped counts as heard at the manager's start,
        so it gets a full timeout to heartbeat again.  Without this, a
        manager whose restart took longer than the timeout (a loaded Pi)
        found every node down and failed the operations it resumed.  A node
        already down stays down until it heartbeats.
        """
        deadline = deadline or self.heartbeat_deadline()
        seen = node.last_heartbeat
        if node.state == "up" and seen < self.started:
            seen = self.started
        return seen >= deadline

    def mark_down_nodes(self):
        """Write each node's state as its last heartbeat says.  A node goes
        down only if it is still silent when written: the liveness receiver
        (another process) may have recorded a datagram since it was read,
        and an unconditional write would take that node down anyway.  Reads
        only the nodes whose state may be wrong, as the store finds them
        (every few seconds, the whole fleet: decoding its reports was most
        of the manager's idle CPU at 1,000 nodes, and even its 1,000
        heartbeat times, parsed, were a percent of a core); ``is_up``
        decides on those."""
        t = models.Node.__table__
        with session_scope() as s:
            deadline = self.heartbeat_deadline()
            maybe = or_(and_(t.c.state == "up", t.c.last_heartbeat < deadline),
                        and_(t.c.state != "up", t.c.last_heartbeat >= deadline),
                        t.c.state.not_in(("up", "down")), t.c.state.is_(None))
            for node in s.execute(select(t.c.id, t.c.name, t.c.state,
                                         t.c.last_heartbeat).where(maybe)).all():
                state = "up" if self.is_up(node, deadline) else "down"
                if node.state == state:
                    continue
                cond = [models.Node.id == node.id]
                if state == "down":
                    cond.append(models.Node.last_heartbeat < deadline)
                if not s.execute(update(models.Node).where(*cond).values(
                        state=state)).rowcount:
                    continue
                LOG.warning("node %s is now %s", node.name, state)

    def up_nodes(self, session):
        """The up nodes' records from the capacity view (name, report...:
        manager/placement_view.py), by name: what the periodic policies
        read every round, without loading every node's row."""
        snap = placement_view.current(session)
        deadline = self.heartbeat_deadline()
        return [n for _, n in sorted(snap.nodes.items()) if self.is_up(n, deadline)]

    def nodes(self, session, up_only=False):
        nodes = list(session.scalars(select(models.Node).order_by(models.Node.name)))
        deadline = self.heartbeat_deadline()
        for n in nodes:
            state = "up" if self.is_up(n, deadline) else "down"
            if n.state != state:  # else the session flushes every node again
                n.state = state
        return [n for n in nodes if n.state == "up"] if up_only else nodes

    def ref(self, node):
        """What drivers get of a node: its name and its node agent's
        client (HTTPS checked against the deployment CA when the node's
        agent serves the certificate issued at join)."""
        tls = None
        if node.agent_server_name:
            if self._agent_tls is None:
                self._agent_tls = joining.tls_context(self.conf.tls.ca_file)
            tls = self._agent_tls
        return base.NodeRef(node.name, nodeagent.NodeAgentClient(
            node.address, node.agent_port, node.agent_token,
            server_name=node.agent_server_name, tls=tls), node.hostname)

    def node_ref(self, session, name):
        node = session.scalar(select(models.Node).where(models.Node.name == name))
        if node is None:
            raise exception.NotFound("no node named %r" % name)
        return self.ref(node)

    def distances(self, names, sources=None):
        """placement.distances, remembered for the last ``DISTANCE_MEMO``
        (names, sources) asked: the topology is read once at start, and a
        shortest-path search over 1,000 nodes took a placement's millisecond.
        Callers must not change what they get."""
        key = (tuple(names), None if sources is None else tuple(sources))
        got = self._distances.get(key)
        if got is None:
            got = placement.distances(self.topology, names, sources)
            with self._distances_lock:
                if len(self._distances) >= DISTANCE_MEMO:
                    self._distances.pop(next(iter(self._distances)))
                self._distances[key] = got
        return got

    def capacity(self, session):
        """``{node: {"max_instances", "used", "up", "schedulable"[,
        "free_cpus", "free_memory_mb"]}}``: what placement decides on,
        from the capacity view (manager/placement_view.py), not the store's
        rows (at 1,000 nodes reading those was most of a decision)."""
        from mec_conpaas.manager import qos
        snap = placement_view.current(session)
        deadline = self.heartbeat_deadline()
        # A node the driver cannot put instances on is never schedulable.
        out = {name: {"max_instances": n.max_instances,
                      "used": len(snap.by_node.get(name, ())),
                      "up": self.is_up(n, deadline),
                      "schedulable": not n.disabled and self.driver.node_can_host(n)}
               for name, n in snap.nodes.items()}
        # Where the cloud schedules the nodes itself (nova): its up/down and free
        # vCPUs and memory bound what placement may use (manager/inventory.py).
        cloud = self.driver.node_inventory()
        for n in snap.nodes.values() if cloud else ():
            host = inventory_mod.host_of(cloud, n)
            if host is not None:
                inventory_mod.cap(out[n.name], host, self.conf.manager.instance_memory_mb,
                                  self.conf.manager.instance_cpus)
        # Nodes reporting their capacity: what is free of it, the reserve
        # for their own work excluded (manager/qos.py).
        for name, (cpus, memory_mb) in qos.free(session, self, snap).items():
            out[name].update(free_cpus=cpus, free_memory_mb=memory_mb)
        return out

    def free_slots(self, session, node=None, capacity=None):
        """Free instance slots on the up, schedulable nodes (or on ``node``
        only), of ``capacity`` if the caller has read it."""
        return sum(placement.free_slots(v)
                   for n, v in (capacity or self.capacity(session)).items()
                   if placement.placeable(v) and (node is None or n == node))

    # -- proxies ---------------------------------------------------------
    def desired_proxies(self, session, draining=(), activating=()):
        """Per access point: every service's near/far/draining servers and
        how its far tier is used (placement.tier_map).  ``activating``:
        instances to count as ACTIVE already (a migration's plan for its
        switch, made before the freeze); the migrations ``route`` named are
        both, whoever pushes."""
        routed = dict(self._routed)  # one copy: operations run in threads
        draining = set(draining) | set(routed)
        activating = set(activating) | set(routed.values())
        nodes = self.nodes(session, up_only=True)
        names = [n.name for n in self.nodes(session)]
        dist = self.distances(names)
        far_tier = self.conf.manager.proxy_far_tier
        services = list(session.scalars(select(models.Service)))
        out = {n.name: {} for n in nodes}
        for svc in services:
            if svc.state == "EPILOGUE" or (svc.state == "ERROR"
                                           and not svc.instances):
                continue
            active = {i.address: i.node_name for i in svc.instances
                      if (i.state == "ACTIVE" or i.id in activating) and i.address
                      and i.id not in draining}
            drain = [{"addr": i.address} for i in svc.instances
                     if i.id in draining and i.address]
            tiers = placement.tier_map([n.name for n in nodes], active, dist, far_tier)
            for node in nodes:
                out[node.name][svc.id] = {
                    "name": svc.name, "port": svc.port,
                    "mode": "http" if svc.type == "web" else "tcp",
                    "maxconn": self.conf.manager.instance_maxconn,
                    "far_tier": far_tier,
                    "near": [{"addr": a} for a, t in sorted(tiers[node.name].items())
                             if t == "local"],
                    "far": [{"addr": a} for a, t in sorted(tiers[node.name].items())
                            if t != "local"],
                    "draining": drain}
                if svc.latency_objective_ms:  # its instances' latency is probed
                    out[node.name][svc.id]["latency_objective_ms"] = \
                        svc.latency_objective_ms
        return {n.name: (self.ref(n), out[n.name]) for n in nodes}

    def service_tiers(self, session, svc):
        """``{ap: {instance id: tier}}`` of a service's active instances, as
        the up access points' proxies use them (desired_proxies)."""
        names = [n.name for n in self.nodes(session)]
        active = {i.id: i.node_name for i in svc.instances
                  if i.state == "ACTIVE" and i.address}
        return placement.tier_map([n.name for n in self.nodes(session, up_only=True)],
                                  active, self.distances(names),
                                  self.conf.manager.proxy_far_tier)

    def route(self, old_id, new_id):
        """Until ``unroute``, every proxy plan drains ``old_id`` and sends
        its share to ``new_id`` whatever the store says (migration's
        switch-first order: before its commit)."""
        self._routed[old_id] = new_id

    def unroute(self, old_id):
        self._routed.pop(old_id, None)

    def proxy_plan(self, draining=(), activating=()):
        """What ``push_proxies`` would push, made ahead of time (migration:
        before the freeze, out of its critical window, where this took 15 ms
        of a loaded manager's time).  It stays good until another push."""
        pushes = self._pushes  # before reading: a push meanwhile makes it stale
        with session_scope() as s:
            plan = self.desired_proxies(s, draining, activating)
            # Every node's, so each node's isolation rules know which
            # addresses are instances (see agents/node/isolation.py).
            nets = sorted({n.instance_network for n in self.nodes(s)
                           if n.instance_network})
        return {"plan": plan, "nets": nets, "after_push": pushes}

    def push_proxies(self, draining=(), planned=None):
        """Every up AP's proxy plan, pushed in parallel: ``planned`` (from
        ``proxy_plan``) unless another push came after it, else made now.
        Returns where the time went (migration records it: this is its
        switch): ``plan`` ms (0 when planned ahead), and per AP
        ``[round trip ms, ms its agent took]``."""
        errors, took = [], {}
        with self._proxy_lock:
            t0 = time.monotonic()
            if planned is None or planned["after_push"] != self._pushes:
                planned = self.proxy_plan(draining)
            plan, nets = planned["plan"], planned["nets"]
            self._pushes += 1
            t1 = time.monotonic()

            def put(ref, services):
                t = time.monotonic()
                answer = ref.agent.put_proxies(services, nets) or {}
                return [round(1000 * (time.monotonic() - t), 1), answer.get("ms")]
            futures = {name: self._pool.submit(put, ref, services)
                       for name, (ref, services) in plan.items()}
            for name, fut in futures.items():
                try:
                    took[name] = fut.result()
                except exception.NodeError as e:
                    errors.append("%s: %s" % (name, e.message))
        if errors:
            raise exception.NodeError("switching proxies failed on "
                                      + "; ".join(errors))
        return {"plan": round(1000 * (t1 - t0), 1), "nodes": took}

    def saved_dir(self, service_id):
        """Where a stopped service's instances' state is kept."""
        return os.path.join(self.conf.state_path, "stopped", service_id)

    def saved_count(self, service_id):
        """Instances a stopped service had (0 if none were saved)."""
        try:
            with open(os.path.join(self.saved_dir(service_id), "index.json")) as f:
                return len(json.load(f))
        except FileNotFoundError:
            return 0

    def forget_bundle(self, sha256):
        """Remove a bundle no service uses any more (nodes keep their cached
        copy until their instances are gone)."""
        try:
            os.unlink(os.path.join(self.conf.state_path, "bundles", sha256 + ".tar.gz"))
        except FileNotFoundError:
            pass

    # -- service agents --------------------------------------------------
    def service_agent(self, instance_id):
        """The client of an instance's service agent (``post``,
        ``wait_healthy``)."""
        with session_scope() as s:
            inst = s.get(models.Instance, instance_id)
            if inst is None:
                raise exception.NotFound("no instance %s" % instance_id)
            return self.node_ref(s, inst.node_name).agent.service_agent(
                instance_id, inst.address)

    def wait_healthy(self, agent):
        """Wait, at most ``[manager] health_timeout``, for a service agent's
        health."""
        return agent.wait_healthy(self.conf.manager.health_timeout)

    def agent_call(self, agent, path, body=None, timeout=10, wait_up=False):
        """POST to a service agent; with ``wait_up``, retry while its
        container is still booting (nothing listens yet)."""
        return agent.post(path, body, timeout=timeout,
                          wait_up=self.conf.manager.health_timeout if wait_up else 0)

    def start_app(self, agent):
        """Release a held instance (its state is in) and wait until its app
        is healthy."""
        self.agent_call(agent, "/start", wait_up=True)
        return self.wait_healthy(agent)

    def notify_peers(self, service_id):
        with session_scope() as s:
            svc = s.get(models.Service, service_id)
            # The master first: workers find it there after it moved.
            active = [i for i in sorted(svc.instances, key=lambda i: i.role != "master")
                      if i.state == "ACTIVE" and i.address] if svc else []
            refs = {n.name: self.ref(n) for n in self.nodes(s)}
            addrs = [i.address for i in active]
            agents = [refs[i.node_name].agent.service_agent(i.id, i.address)
                      for i in active if i.node_name in refs]
        for agent in agents:
            try:
                agent.post("/notify", {"peers": addrs})
            except exception.NodeError as e:
                LOG.warning("notify %s: %s", agent.address, e.message)

    def sweep_orphans(self):
        """Delete containers no instance row accounts for.

        Rows are written before their container exists and removed after it
        is gone, so listing the containers *before* reading the rows never
        takes an instance being created for an orphan.
        """
        with session_scope() as s:
            refs = [self.ref(n) for n in self.nodes(s, up_only=True)
                    if self.driver.node_can_host(n)]
        present = {}
        for ref in refs:
            try:
                present[ref] = self.driver.list_instances(ref)
            except exception.NodeError as e:
                LOG.warning("cannot list instances on %s: %s", ref.name, e.message)
        with session_scope() as s:
            known = set(s.scalars(select(models.Instance.id)))
        removed = []
        for ref, instances in present.items():
            for inst in instances:
                if inst["id"] in known:
                    continue
                LOG.warning("removing orphan container %s on %s", inst["id"],
                            ref.name)
                try:
                    self.driver.delete_instance(ref, inst["id"], inst.get("handle"))
                    removed.append(inst["id"])
                except exception.NodeError as e:
                    LOG.warning("orphan %s on %s: %s", inst["id"], ref.name,
                                e.message)
        return removed
