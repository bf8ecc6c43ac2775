"""Placement and proximity: pure functions of observed state.

No I/O here: the manager gathers nodes, loads and the topology, and these
functions decide.  That keeps them testable without containers.
"""
import heapq

from mec_conpaas import exception


def distances(topology, nodes):
    """All-pairs shortest latency (ms) between ``nodes`` over the topology
    links; nodes missing from the topology are 0 ms from themselves and
    1 ms (one unknown hop) from everyone else."""
    graph = {}
    for a, b, ms in (topology or {}).get("links", []):
        graph.setdefault(a, []).append((b, float(ms)))
        graph.setdefault(b, []).append((a, float(ms)))
    out = {}
    for src in nodes:
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


def tiers(ap, instance_nodes, dist):
    """Split instances into the ones nearest to access point ``ap`` and the
    rest (HAProxy's backup tier)."""
    if not instance_nodes:
        return [], []
    best = min(dist[ap][n] for n in instance_nodes.values())
    near = [i for i, n in instance_nodes.items() if dist[ap][n] == best]
    far = [i for i, n in instance_nodes.items() if dist[ap][n] != best]
    return sorted(near), sorted(far)


def free_slots(node):
    return max(0, node["max_instances"] - node["used"])


def place(count, home, nodes, dist, exclude=()):
    """Choose nodes for ``count`` new instances: least loaded among the
    nearest to ``home`` with a free slot, widening outwards.

    ``nodes``: ``{name: {"max_instances", "used", "up"}}``.
    """
    pool = {n: dict(v) for n, v in nodes.items() if v["up"] and n not in exclude}
    total = sum(free_slots(v) for v in pool.values())
    if count > total:
        raise exception.InsufficientCapacity(
            "asked for %d more instance(s) but the up nodes have only %d free "
            "slot(s): lower the count or add nodes" % (count, total))
    chosen = []
    for _ in range(count):
        candidates = [n for n in pool if free_slots(pool[n]) > 0]
        n = min(candidates, key=lambda c: (dist.get(home, {}).get(c, 0.0),
                                           pool[c]["used"] / max(1, pool[c]["max_instances"]),
                                           c))
        pool[n]["used"] += 1
        chosen.append(n)
    return chosen


def victims(count, home, instances, dist):
    """Instances to remove when scaling in: farthest from home first, the
    newest among equals."""
    order = sorted(instances, key=lambda i: (-dist.get(home, {}).get(i["node"], 0.0),
                                             -i["seq"]))
    return order[:count]
