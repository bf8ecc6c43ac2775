"""Eviction, after ENORM: when a node is short, the lowest priority goes,
and (unlike ENORM, which terminates it) it is re-placed on another access
point, make-before-break as a migration.

Pure functions: ``node`` as in :mod:`capacity`, ``nodes`` and ``dist`` as
in :func:`placement.place`.
"""
from mec_conpaas.policies import capacity


def victims(node, cpus, memory_mb, below):
    """Containers to evict from ``node`` so that ``cpus`` and ``memory_mb``
    more fit: only those whose priority is below ``below``, lowest first,
    the newest (highest ``seq``) first among equals, as few as the order
    gives.  None when evicting every such container would not make room
    (then nothing is to be evicted: admission refuses instead); [] when
    it fits already."""
    if capacity.fits(node, cpus, memory_mb):
        return []
    order = sorted(((i, c) for i, c in node.get("containers", {}).items()
                    if c["priority"] < below),
                   key=lambda ic: (ic[1]["priority"], -ic[1].get("seq", 0), ic[0]))
    chosen = []
    for iid, _ in order:
        chosen.append(iid)
        if capacity.fits(node, cpus, memory_mb, without=chosen):
            return chosen
    return None


def targets(source, evicted, cluster, dist):
    """Where each evicted container is re-placed: the nearest access point
    to ``source`` (its users stay close) where its size fits without
    evicting anything there, and an instance slot is free.

    ``evicted``: ``{id: {"cpus", "memory_mb"}}``; ``cluster``: ``{name:
    node as in capacity, plus "up" and "schedulable", and optionally
    "free_slots"}`` (where a node counts instance slots: each container
    placed takes one, so two evictions never share a node's last slot).
    Returns ``{id: node name or None}`` (None: no other node has room;
    the caller then evicts nothing).
    """
    room = {n: {k: v for k, v in node.items() if k != "containers"}
            | {"containers": dict(node.get("containers", {}))}
            for n, node in cluster.items()
            if n != source and node.get("up", True) and node.get("schedulable", True)}
    out = {}
    for iid, c in sorted(evicted.items()):
        fit = [n for n in room if room[n].get("free_slots", 1) > 0
               and capacity.fits(room[n], c["cpus"], c["memory_mb"])]
        if not fit:
            out[iid] = None
            continue
        best = min(fit, key=lambda n: (dist.get(source, {}).get(n, 0.0),
                                       -capacity.free(room[n])[0], n))
        room[best]["containers"][iid] = dict(c)
        if "free_slots" in room[best]:
            room[best]["free_slots"] -= 1
        out[iid] = best
    return out
