"""Per-node allocation: a number, and from it an instance network, a Wi-Fi
client subnet, a channel and an availability zone.

Keyed by the node's stable identity (Pi serial or MAC) so that a reboot or
a re-flash of the same Pi gets the same values; released when the node is
removed.  Playbook-deployed APs register fixed values: they are recorded
here too (``record``), so that a flashed Pi never gets a subnet one of them
uses.  Nodes whose instances are on one network they all share (nova's
provider network; the driver says which, ``shares_instance_network``) get no
instance network of their own: the shared one is recorded as shared, may be
named by each of them, and is never routed via one of them.  The table's
unique columns are the last word when two manager processes allocate at
once; within one process a lock keeps concurrent joins from choosing the
same least-used channel.
"""
import functools
import ipaddress
import logging
import threading

from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.db import models

LOG = logging.getLogger(__name__)
_LOCK = threading.Lock()


class Pools:
    """The configured pools, checked once: a bad value is the admin's to
    fix, and says how."""

    def __init__(self, opts):
        self.instance = self._pool(opts, "instance_network_pool",
                                   opts.instance_network_prefix)
        self.client = self._pool(opts, "client_network_pool",
                                 opts.client_network_prefix)
        if self.instance[0].overlaps(self.client[0]):
            raise exception.BadRequest(
                "[enrollment] instance_network_pool %s overlaps client_network_pool "
                "%s: give them disjoint networks" % (self.instance[0], self.client[0]))
        try:
            self.channels = [int(c) for c in opts.wifi_channels]
        except ValueError:
            raise exception.BadRequest(
                "[enrollment] wifi_channels must be channel numbers, e.g. 1,6,11; "
                "got %s" % ",".join(opts.wifi_channels))
        if not self.channels:
            raise exception.BadRequest("[enrollment] wifi_channels is empty: list "
                                       "at least one channel (e.g. 1,6,11)")
        self.zone_format = opts.availability_zone_format
        # Number 0 would be the pool's own first subnet (10.100.0.0/24),
        # which the playbooks never use: numbers start at 1.
        self.max_number = min(2 ** (self.instance[1] - self.instance[0].prefixlen),
                              2 ** (self.client[1] - self.client[0].prefixlen)) - 1

    @staticmethod
    def _pool(opts, name, prefix):
        try:
            net = ipaddress.IPv4Network(getattr(opts, name))
        except ValueError as e:
            raise exception.BadRequest("[enrollment] %s: %s (an IPv4 network in "
                                       "CIDR notation, e.g. 10.100.0.0/16)" % (name, e))
        if net.prefixlen >= prefix:
            raise exception.BadRequest(
                "[enrollment] %s %s is not larger than its prefix /%d: use a shorter "
                "prefix for the pool or a longer one per node" % (name, net, prefix))
        return net, prefix

    @staticmethod
    def subnet(pool, number):
        net, prefix = pool
        size = 2 ** (32 - prefix)
        return ipaddress.IPv4Network((int(net.network_address) + number * size, prefix))

    def number_of(self, instance_network):
        """The number whose instance network this is, or None."""
        net, prefix = self.instance
        if instance_network.prefixlen != prefix or not instance_network.subnet_of(net):
            return None
        n = (int(instance_network.network_address) - int(net.network_address)) \
            >> (32 - prefix)
        return n if 1 <= n <= self.max_number else None

    def zone(self, name, number):
        try:
            return self.zone_format.format(name=name, number=number)
        except (KeyError, IndexError, ValueError):
            raise exception.BadRequest(
                "[enrollment] availability_zone_format %r: use {name} and/or "
                "{number}" % self.zone_format)


def view(alloc):
    if alloc is None:
        return None
    return {"number": alloc.number, "identity": alloc.identity,
            "instance_network": alloc.instance_network or alloc.shared_network,
            "instance_network_shared": alloc.shared_network is not None,
            "client_network": alloc.client_network,
            "wifi_channel": alloc.wifi_channel,
            "availability_zone": alloc.availability_zone, "source": alloc.source}


def _network(value, what):
    try:
        return ipaddress.IPv4Network(value)
    except ValueError as e:
        raise exception.BadRequest("%s %r is not an IPv4 network (%s): fix it in the "
                                   "node's configuration" % (what, value, e))


@functools.lru_cache(maxsize=16384)
def _parsed(value):
    return ipaddress.IPv4Network(value)


def _taken(session, identity):
    """Numbers, networks (network, owner row, shared?) and channel use of
    every other live allocation.

    Every join and registration asks this of the whole fleet: read as
    plain rows of the columns it needs (no ORM objects) with each network
    text parsed once per process, not once per join (enrolling 1,000
    nodes read 1,000 allocations and parsed 2,000 networks per join)."""
    t = models.NodeAllocation.__table__
    numbers, nets, channels = set(), [], {}
    for a in session.execute(select(t.c.identity, t.c.number, t.c.node_name,
                                    t.c.instance_network, t.c.shared_network,
                                    t.c.client_network, t.c.wifi_channel)):
        if a.identity == identity:
            continue
        numbers.add(a.number)
        for value, shared in ((a.instance_network, False), (a.shared_network, True),
                              (a.client_network, False)):
            if value:
                nets.append((_parsed(value), a, shared))
        if a.wifi_channel is not None:
            channels[a.wifi_channel] = channels.get(a.wifi_channel, 0) + 1
    return numbers, nets, channels


def _clash(nets, candidate, shared=False):
    """(network, owner) of the first live network ``candidate`` overlaps; a
    shared candidate may be the very network others share."""
    for net, owner, other_shared in nets:
        if net.overlaps(candidate) and not (shared and other_shared and net == candidate):
            return net, owner
    return None


def allocate(session, pools, identity, node_id, name):
    """The allocation of the node ``identity`` (joining now): its existing
    one, or the lowest free number whose subnets overlap no live node's."""
    with _LOCK:
        alloc = session.get(models.NodeAllocation, identity)
        if alloc is None:
            numbers, nets, channels = _taken(session, identity)
            for number in range(1, pools.max_number + 1):
                if number in numbers:
                    continue
                inst = pools.subnet(pools.instance, number)
                client = pools.subnet(pools.client, number)
                if _clash(nets, inst) is None and _clash(nets, client) is None:
                    break
            else:
                raise exception.InsufficientCapacity(
                    "no free node number left in [enrollment] instance_network_pool "
                    "/ client_network_pool (%d nodes at most): remove nodes that left "
                    "(mec-conpaas node delete) or give larger pools" % pools.max_number)
            channel = min(pools.channels, key=lambda c: (channels.get(c, 0),
                                                         pools.channels.index(c)))
            alloc = models.NodeAllocation(
                identity=identity, number=number, instance_network=str(inst),
                client_network=str(client), wifi_channel=channel, source="joined")
            session.add(alloc)
            LOG.info("node %s (%s) allocated number %d: instances %s, clients %s, "
                     "channel %d", name, identity, number, inst, client, channel)
        _bind(session, alloc, node_id, name, pools)
        session.flush()
        return alloc


def _bind(session, alloc, node_id, name, pools):
    stale = session.scalar(select(models.NodeAllocation).where(
        models.NodeAllocation.node_id == node_id,
        models.NodeAllocation.identity != alloc.identity))
    if stale is not None:  # the node's identity changed: one row per node
        session.delete(stale)
        session.flush()
    alloc.node_id, alloc.node_name = node_id, name
    alloc.availability_zone = pools.zone(name, alloc.number)


def record(session, pools, node_id, name, instance_network, client_network=None,
           identity=None, shared=False):
    """A node registered with fixed subnets (a playbook's): keep them in the
    allocator so no joining node gets them.  Refused (409, nothing stored)
    when they overlap another live node's.  ``shared``: the instance network
    is one several nodes share (``CloudDriver.shares_instance_network``):
    others may name it too, no node may have it as its own."""
    identity = identity or "node:" + node_id
    inst = _network(instance_network, "instance_network")
    client = _network(client_network, "client_network") if client_network else None
    with _LOCK:
        existing = session.scalar(select(models.NodeAllocation).where(
            models.NodeAllocation.node_id == node_id))
        if existing is not None:
            identity = existing.identity
        numbers, nets, channels = _taken(session, identity)
        for net, net_shared in ((inst, shared), (client, False)):
            found = net and _clash(nets, net, net_shared)
            if found:
                other, owner = found
                raise exception.Conflict(
                    "network %s of node %s overlaps %s of node %s (number %d): give "
                    "this node other networks, or remove the other node"
                    % (net, name, other, owner.node_name or owner.identity,
                       owner.number))
        alloc = existing or session.get(models.NodeAllocation, identity)
        if alloc is None:
            number = pools.number_of(inst)
            if number is None or number in numbers:
                number = next((n for n in range(1, pools.max_number + 1)
                               if n not in numbers), None)
                if number is None:
                    # Numbers past the pool: a recorded node still needs one.
                    number = max(numbers | {pools.max_number}) + 1
            alloc = models.NodeAllocation(identity=identity, number=number,
                                          source="registered")
            session.add(alloc)
        alloc.instance_network = None if shared else str(inst)
        alloc.shared_network = str(inst) if shared else None
        alloc.client_network = str(client) if client else None
        _bind(session, alloc, node_id, name, pools)
        session.flush()
        return alloc


def release(session, node_id):
    """Forget the node's allocation (remove-node): its number and subnets
    go back to the pools."""
    alloc = session.scalar(select(models.NodeAllocation).where(
        models.NodeAllocation.node_id == node_id))
    if alloc is not None:
        LOG.info("node %s released number %d (%s, %s)", alloc.node_name,
                 alloc.number, alloc.instance_network, alloc.client_network)
        session.delete(alloc)
    return alloc


def of_node(session, node_id):
    return session.scalar(select(models.NodeAllocation).where(
        models.NodeAllocation.node_id == node_id))


def routes(session, node_id):
    """Routes every node needs to the others' subnets, via their address:
    the one list the node agents (and the master) install.  A shared
    instance network is on-link wherever it is used: routing it via one of
    its nodes would replace that, so only their own subnets are listed."""
    # Plain rows of the columns needed (the nodes' reports are not).
    at, nt = models.NodeAllocation.__table__, models.Node.__table__
    allocs = {a.node_id: a for a in session.execute(select(
        at.c.node_id, at.c.instance_network, at.c.client_network))}
    out = []
    for node in session.execute(select(nt.c.id, nt.c.name, nt.c.address,
                                       nt.c.instance_network).order_by(nt.c.name)):
        if node.id == node_id:
            continue
        a = allocs.get(node.id)
        nets = [a.instance_network, a.client_network] if a else [node.instance_network]
        for net in nets:
            if net:
                out.append({"node": node.name, "subnet": net, "via": node.address})
    return out


def route_loop(conf, stop, interval=5):
    """The master's routes to every node (``[enrollment] manage_routes``):
    the list the node agents get, applied here too."""
    from mec_conpaas.agents.node import routes as routes_mod
    from mec_conpaas.db.session import session_scope
    table = routes_mod.RouteTable(conf.join.route_protocol)
    while not stop.wait(interval):
        try:
            with session_scope() as s:
                wanted = routes(s, None)
            table.sync(wanted)
        except Exception:
            LOG.exception("the master's routes to the nodes")
