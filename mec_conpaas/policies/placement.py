"""Placement and proximity: pure functions of observed state.

No I/O here: the manager gathers nodes, loads and the topology, and these
functions decide.  That keeps them testable without containers.
"""
import heapq

from mec_conpaas import exception


def distances(topology, nodes, sources=None):
    """All-pairs shortest latency (ms) between ``nodes`` over the topology
    links (only from ``sources`` if given: a placement near one node needs
    one row, not a thousand); nodes missing from the topology are 0 ms
    from themselves and 1 ms (one unknown hop) from everyone else."""
    graph = {}
    for a, b, ms in (topology or {}).get("links", []):
        graph.setdefault(a, []).append((b, float(ms)))
        graph.setdefault(b, []).append((a, float(ms)))
    out = {}
    for src in (nodes if sources is None else sources):
        dist = {src: 0.0}
        heap = [(0.0, src)]
        while heap:
            d, n = heapq.heappop(heap)
            if d > dist.get(n, float("inf")):
                continue
            for m, w in graph.get(n, []):
                if d + w < dist.get(m, float("inf")):
                    dist[m] = d + w
                    heapq.heappush(heap, (d + w, m))
        out[src] = {dst: dist.get(dst, 0.0 if dst == src else
                                  (1.0 if src not in graph or dst not in graph
                                   else float("inf")))
                    for dst in nodes}
    return out


FAR_TIERS = ("spill", "backup")


def tiers(ap, instance_nodes, dist):
    """Split instances into the ones nearest to access point ``ap`` and the
    rest (its proxy's far tier)."""
    if not instance_nodes:
        return [], []
    best = min(dist[ap][n] for n in instance_nodes.values())
    near = [i for i, n in instance_nodes.items() if dist[ap][n] == best]
    far = [i for i, n in instance_nodes.items() if dist[ap][n] != best]
    return sorted(near), sorted(far)


def tier_map(aps, instance_nodes, dist, far_tier="spill"):
    """What every instance is to every access point's proxy.

    ``{ap: {instance: "local" | "spill" | "backup"}}``: ``local`` instances
    (the nearest) take every request while they have free slots; the
    others are the ``far_tier``: ``spill`` takes what overflows the local
    tier (and everything when no local instance is up), ``backup`` only
    what arrives while no local instance is up.
    """
    if far_tier not in FAR_TIERS:
        raise ValueError("far tier must be one of %s, not %r" % (FAR_TIERS, far_tier))
    out = {}
    for ap in aps:
        near, far = tiers(ap, instance_nodes, dist)
        out[ap] = dict([(i, "local") for i in near] + [(i, far_tier) for i in far])
    return out


def free_slots(node):
    return max(0, node["max_instances"] - node["used"])


def fits(node, need):
    """Whether an instance of ``need`` = (cpus, memory_mb) fits in what the
    node has free (``free_cpus``/``free_memory_mb``, its reserve already
    left out); a node that does not report them is judged by slots."""
    if need is None or "free_cpus" not in node:
        return True
    return need[0] <= node["free_cpus"] + 1e-9 and need[1] <= node["free_memory_mb"]


def placeable(node):
    """Up and not disabled by an admin (``schedulable`` absent means yes)."""
    return node["up"] and node.get("schedulable", True)


def describe(nodes, exclude=()):
    """Why each node has the slots it has, for an error that says there are
    too few: an admin sees at once which node is down, disabled or full."""
    def why(v):
        if not v["up"]:
            return "down"
        if not v.get("schedulable", True):
            return "disabled"
        return "%d of %d free" % (free_slots(v), v["max_instances"])
    return "; ".join("%s: %s" % (n, why(nodes[n])) for n in sorted(nodes)
                     if n not in exclude) or "no node"


def place(count, home, nodes, dist, exclude=(), need=None):
    """Choose nodes for ``count`` new instances: least loaded among the
    nearest to ``home`` with a free slot (and, with ``need`` = (cpus,
    memory_mb), room for that size: :func:`fits`), widening outwards.

    ``nodes``: ``{name: {"max_instances", "used", "up", "schedulable"[,
    "free_cpus", "free_memory_mb"]}}``; down and disabled nodes get nothing.
    """
    pool = {n: dict(v) for n, v in nodes.items() if placeable(v) and n not in exclude}
    total = sum(free_slots(v) for v in pool.values())
    if count > total:
        raise exception.InsufficientCapacity(
            "asked for %d more instance(s) but the up nodes have only %d free "
            "slot(s): lower the count or add nodes" % (count, total))
    chosen = []
    for _ in range(count):
        candidates = [n for n in pool if free_slots(pool[n]) > 0 and fits(pool[n], need)]
        if not candidates:
            raise exception.InsufficientCapacity(
                "asked for %d more instance(s) of %.2f cpus and %d MiB but the up "
                "nodes have room for %d: lower the count, resize the service or "
                "add nodes (each node keeps a reserve for its own work)" % (
                    count, need[0], need[1], len(chosen)))
        n = min(candidates, key=lambda c: (dist.get(home, {}).get(c, 0.0),
                                           pool[c]["used"] / max(1, pool[c]["max_instances"]),
                                           c))
        pool[n]["used"] += 1
        if need is not None and "free_cpus" in pool[n]:
            pool[n]["free_cpus"] -= need[0]
            pool[n]["free_memory_mb"] -= need[1]
        chosen.append(n)
    return chosen


def victims(count, home, instances, dist):
    """Instances to remove when scaling in: farthest from home first, the
    newest among equals."""
    order = sorted(instances, key=lambda i: (-dist.get(home, {}).get(i["node"], 0.0),
                                             -i["seq"]))
    return order[:count]


def evacuate(node, services, nodes, dist):
    """Plan a node drain: a target for every instance on ``node``.

    ``services``: ``[{"id", "home", "instances": [ids on node]}]``, in the
    order they are to be served; ``nodes`` as for :func:`place`.  Targets are
    the least loaded among the nearest to ``node`` (its users stay close),
    the services sharing the other nodes' free slots.  A service whose home
    is ``node`` gets the target of its first instance as new home.

    Returns ``{service id: {"moves": [{"instance", "to"}], "home": new home
    or None}}``; raises InsufficientCapacity, having planned nothing, when
    the other up, schedulable nodes lack the slots.
    """
    needed = sum(len(s["instances"]) for s in services)
    free = sum(free_slots(v) for n, v in nodes.items() if placeable(v) and n != node)
    if needed > free:
        raise exception.InsufficientCapacity(
            "draining %s needs %d free instance slot(s) on the other up, "
            "schedulable nodes but they have %d (%s): add or enable nodes, or "
            "scale services in, then retry; nothing was changed" % (
                node, needed, free, describe(nodes, exclude=(node,))))
    targets = iter(place(needed, node, nodes, dist, exclude=(node,)))
    plan = {}
    for svc in services:
        moves = [{"instance": i, "to": next(targets)} for i in svc["instances"]]
        plan[svc["id"]] = {"moves": moves,
                           "home": moves[0]["to"] if moves and svc["home"] == node
                           else None}
    return plan
