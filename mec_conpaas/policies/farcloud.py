"""The far cloud: nodes of kind ``cloud`` (a data centre behind the
backbone, seed 004's "cloud" beside the edge) as pure decisions.

A cloud node has more capacity than an access point, no Wi-Fi users, and
is tens of milliseconds further away.  So it is the last resort: new
instances go to the access points while any has a free slot, and to a
cloud node only for what no access point can take (:func:`place`).  A
service whose home is a cloud node goes back to an access point as soon as
one has room for its instances there (:func:`returns`); the manager turns
that into an ordinary migration, make-before-break.

ENORM's admission evicts a lower priority from a full access point to
another one; when no access point can take it, the cloud node does
(:func:`edge_first`), and it returns like any other service on the cloud.

Which nodes are cloud nodes comes from the topology file (``kind: cloud``
on the node), on the embedded edge and on deployed clusters alike.
"""
from mec_conpaas.policies import placement


def cloud_nodes(topology):
    """Names of the topology's ``kind: cloud`` nodes."""
    return {name for name, spec in ((topology or {}).get("nodes") or {}).items()
            if isinstance(spec, dict) and spec.get("kind") == "cloud"}


# Added to every distance to a cloud node by :func:`edge_first`: more than
# any path between access points, so the cloud is only ever the last resort.
CLOUD_LAST_MS = 1e6


def edge_first(dist, clouds):
    """``dist`` (as for :func:`placement.place`) with every cloud node put
    behind every access point: the eviction policies re-place an evicted
    container on the nearest node with room (policies/eviction.py), which
    must be an access point whenever one has room, however the topology
    places the cloud (a nearby data centre may be fewer ms away than the
    farthest access point), and the nearest cloud node otherwise."""
    if not clouds:
        return dist
    return {src: {dst: ms + CLOUD_LAST_MS if dst in clouds and src != dst else ms
                  for dst, ms in row.items()}
            for src, row in dist.items()}


def place(count, home, nodes, dist, clouds, exclude=(), need=None):
    """:func:`placement.place` (``need`` as there), edge first: the access points get what they
    have slots for, cloud nodes only the rest.  A service whose home is a
    cloud node (created there with ``--node``, or offloaded) grows there,
    nearest first, until it returns as a whole (:func:`returns`)."""
    if home in clouds:  # pinned there, or offloaded: the cloud is its place
        return placement.place(count, home, nodes, dist, exclude, need)
    edge = {n: v for n, v in nodes.items() if n not in clouds}
    edge_free = sum(placement.free_slots(v) for n, v in edge.items()
                    if placement.placeable(v) and n not in exclude)
    on_edge = min(count, edge_free)
    chosen = placement.place(on_edge, home, edge, dist, exclude, need) if on_edge else []
    if count > on_edge:
        far = {n: v for n, v in nodes.items() if n in clouds}
        if not far:  # the usual message, counting the edge's slots
            return placement.place(count, home, nodes, dist, exclude, need)
        chosen += placement.place(count - on_edge, home, far, dist, exclude, need)
    return chosen


def returns(services, nodes, dist, clouds):
    """Services to bring back from the cloud: ``{service id: access point}``.

    ``services``: ``[{"id", "home", "on_home": instances on the home,
    "need": (cpus, memory_mb) of one, optional}]`` of services free to move
    (RUNNING, no operation); ``nodes`` as for :func:`placement.place`.  A
    service returns when one access point has free slots, and room for
    their size where the node reports it (an evicted service must not go
    back where admission would evict it again), for all its home
    instances; the nearest to the cloud node (then the least loaded) is
    chosen, and what is promised to one service is not offered to the next.
    """
    pool = {n: dict(v) for n, v in nodes.items()
            if n not in clouds and placement.placeable(v)}
    out = {}
    for svc in services:
        if svc["home"] not in clouds or not svc["on_home"]:
            continue
        need = svc.get("need")
        total = need and (need[0] * svc["on_home"], need[1] * svc["on_home"])
        fits = [n for n, v in pool.items() if placement.free_slots(v) >= svc["on_home"]
                and placement.fits(v, total)]
        if not fits:
            continue
        target = min(fits, key=lambda n: (dist.get(svc["home"], {}).get(n, 0.0),
                                          pool[n]["used"] / max(1, pool[n]["max_instances"]),
                                          n))
        pool[target]["used"] += svc["on_home"]
        if total and "free_cpus" in pool[target]:
            pool[target]["free_cpus"] -= total[0]
            pool[target]["free_memory_mb"] -= total[1]
        out[svc["id"]] = target
    return out
