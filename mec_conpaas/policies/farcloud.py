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

**Offload because the objective allows it** (:func:`offloads`), after
ENORM's third reason to end an edge server (the edge does not improve its
QoS where the cloud already meets it) and its priority rule.  A service on
a cloud node whose users are at an access point and whose objective the
cloud misses *needs the edge*; when the access point nearest its users is
full, the services there whose own objective the cloud meets with a margin
(ENORM's application latency: network round trips to their users plus
their measured computing latency) and whose priority is not above its own
move to the cloud, and it takes their place (:func:`returns`, needy
services first, to the access point nearest their users).
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


def promised(params):
    """The nodes an operation in flight (its ``params``) is placing
    instances on: a create's or scale's node, a migration's target, the
    targets of an eviction's or a drain's moves."""
    out = {params.get(k) for k in ("node", "to", "home")}
    out.update(m.get("to") for m in params.get("moves") or () if isinstance(m, dict))
    return {n for n in out if isinstance(n, str)}


# Round trips each request makes over every hop between its user and the
# instance: one to open the connection, one for the request and its
# answer (the proxies close a connection after each request).
ROUND_TRIPS = 2


def predicted_ms(user_aps, node, dist, wifi_ms, service_ms):
    """ENORM's application latency of a service at ``node`` for users at
    ``user_aps`` (the farthest one's): the round trips over their Wi-Fi hop
    and the backbone to ``node``, plus its computing latency ``service_ms``
    (the node agents' probe of the instance: the app's own time)."""
    return max(ROUND_TRIPS * 2 * (wifi_ms + dist.get(ap, {}).get(node, float("inf")))
               for ap in user_aps) + (service_ms or 0.0)


def tolerates(svc, node, dist, wifi_ms, margin):
    """Whether ``svc``'s latency objective is met from ``node`` with
    ``margin`` (a fraction of the objective) to spare, for its users (at
    its home when none is known).  False without an objective or without a
    measured computing latency: nothing says the cloud is good enough."""
    objective, service_ms = svc.get("objective_ms"), svc.get("service_ms")
    if objective is None or service_ms is None:
        return False
    return predicted_ms(svc.get("users") or [svc["home"]], node, dist, wifi_ms,
                        service_ms) <= objective * (1.0 - margin)


def needs_edge(svc, clouds, dist, wifi_ms, margin):
    """A service on a cloud node that has users at access points, and whose
    objective the cloud misses (or which sets none: the edge is nearer its
    users, and nothing says the cloud is good enough)."""
    return (svc["home"] in clouds and bool(svc.get("on_home")) and bool(svc.get("users"))
            and not tolerates(svc, svc["home"], dist, wifi_ms, margin))


def _by_users(svc, aps, dist, pool=None):
    """``aps`` best first for ``svc``: nearest its users (mean one-way
    latency from their access points), then nearest its cloud node, then
    the least loaded in ``pool``."""
    users = svc.get("users") or []

    def key(n):
        near = sum(dist.get(u, {}).get(n, float("inf")) for u in users) / len(users) \
            if users else 0.0
        load = pool[n]["used"] / max(1, pool[n]["max_instances"]) if pool else 0.0
        return (near, dist.get(svc["home"], {}).get(n, 0.0), load, n)
    return sorted(aps, key=key)


def _room(node, count, total):
    return placement.free_slots(node) >= count and placement.fits(node, total)


def _take(node, count, total, sign=1):
    node["used"] += sign * count
    if total and "free_cpus" in node:
        node["free_cpus"] -= sign * total[0]
        node["free_memory_mb"] -= sign * total[1]


def _total(svc):
    need = svc.get("need")
    return need and (need[0] * svc["on_home"], need[1] * svc["on_home"])


def returns(services, nodes, dist, clouds, busy=(), wifi_ms=0.0, margin=0.0):
    """Services to bring back from the cloud: ``{service id: access point}``.

    ``services``: ``[{"id", "home", "on_home": instances on the home,
    "need": (cpus, memory_mb) of one, optional; "users": the access points
    of its users, "priority", "objective_ms", "service_ms", optional}]`` of
    services free to move (RUNNING, no operation); ``nodes`` as for
    :func:`placement.place`; ``busy``: nodes an operation in flight is
    placing instances on (a slot that looks free there is promised: a
    create waiting for the evictions that make its room, say).  A service
    returns when one access point has free slots, and room for their size
    where the node reports it (an evicted service must not go back where
    admission would evict it again), for all its home instances: the
    nearest to its users, else to the cloud node (then the least loaded).
    Services that need the edge (:func:`needs_edge`) are served first,
    then by priority; what is promised to one service is not offered to
    the next.
    """
    pool = {n: dict(v) for n, v in nodes.items()
            if n not in clouds and n not in busy and placement.placeable(v)}
    out = {}
    order = sorted(services, key=lambda s: (
        not needs_edge(s, clouds, dist, wifi_ms, margin), -s.get("priority", 0)))
    for svc in order:
        if svc["home"] not in clouds or not svc["on_home"]:
            continue
        total = _total(svc)
        fits = [n for n in pool if _room(pool[n], svc["on_home"], total)]
        if not fits:
            continue
        target = _by_users(svc, fits, dist, pool)[0]
        _take(pool[target], svc["on_home"], total)
        out[svc["id"]] = target
    return out


def offloads(services, nodes, dist, clouds, busy=(), wifi_ms=0.0, margin=0.25):
    """Services to move from an access point to a cloud node because their
    objective allows it, each to make room for one that needs the edge:
    ``[{"id", "to", "source", "for", "reason"}]``.

    ``services``: every service (as for :func:`returns`, with ``"busy"``:
    an operation holds it); ``busy``: as for :func:`returns`.  For each
    service that needs the edge (highest priority first) whose nearest
    access point to its users has no room: the services at home there,
    free to move, whose objective a cloud node with room meets with
    ``margin`` to spare for their users, and whose priority is not above
    its own, lowest priority first, until the access point has room for it;
    nothing moves if they cannot make enough.  A needy service that some
    access point has room for moves back by :func:`returns` instead.
    """
    pool = {n: dict(v) for n, v in nodes.items() if placement.placeable(v)}
    edge = sorted(n for n in pool if n not in clouds)
    moved, out = set(), []
    needy = sorted((s for s in services if not s.get("busy")
                    and needs_edge(s, clouds, dist, wifi_ms, margin)),
                   key=lambda s: (-s.get("priority", 0), s["id"]))
    for svc in needy:
        total = _total(svc)
        ranked = _by_users(svc, edge, dist)
        if not ranked or ranked[0] in busy or any(
                _room(pool[n], svc["on_home"], total) for n in ranked if n not in busy):
            continue  # nowhere yet, or returns() brings it back
        ap = ranked[0]
        victims = sorted((v for v in services if v["home"] == ap and v.get("on_home")
                          and not v.get("busy") and v["id"] not in moved
                          and v.get("priority", 0) <= svc.get("priority", 0)),
                         key=lambda v: (v.get("priority", 0), v["id"]))
        plan, trial = [], {n: dict(v) for n, v in pool.items()}
        for v in victims:
            if _room(trial[ap], svc["on_home"], total):
                break
            clouds_ok = [c for c in sorted(clouds, key=lambda c: (dist.get(ap, {}).get(
                c, float("inf")), c)) if c in trial and _room(trial[c], v["on_home"],
                                                              _total(v))
                         and tolerates(v, c, dist, wifi_ms, margin)]
            if not clouds_ok:
                continue
            _take(trial[ap], v["on_home"], _total(v), -1)
            _take(trial[clouds_ok[0]], v["on_home"], _total(v))
            plan.append((v, clouds_ok[0]))
        if not plan or not _room(trial[ap], svc["on_home"], total):
            continue
        _take(trial[ap], svc["on_home"], total)  # promised to it
        pool = trial
        for v, cloud in plan:
            moved.add(v["id"])
            out.append({"id": v["id"], "to": cloud, "source": ap, "for": svc["id"],
                        "reason": "offload: objective %g ms met from %s (%.0f ms "
                                  "predicted for its users), priority %d; frees %s for "
                                  "%s (priority %d, %s from %s: %s)" % (
                                      v["objective_ms"], cloud, predicted_ms(
                                          v.get("users") or [ap], cloud, dist, wifi_ms,
                                          v["service_ms"]),
                                      v.get("priority", 0), ap, svc.get("name", svc["id"]),
                                      svc.get("priority", 0), "%.0f ms" % predicted_ms(
                                          svc["users"], svc["home"], dist, wifi_ms,
                                          svc.get("service_ms")),
                                      svc["home"], "objective %g ms" % svc["objective_ms"]
                                      if svc.get("objective_ms") is not None
                                      else "no objective")})
    return out
