"""Auto-scaling on a node, after ENORM: one round over a node's containers.

ENORM grows a container by one unit (a core and 200 MB) through cgroups
when its service needs it and terminates the lowest priority when the
node is short.  Here a round:

1. shrinks by a unit every grown container whose service meets its
   latency objective comfortably (below ``shrink_below`` of it);
2. grows by a unit each container that misses its objective, the highest
   priority first, while there is room; when there is not, it evicts
   containers of lower priority (re-placed on another node, see
   :mod:`eviction`), or says it is blocked (the caller may add a replica
   elsewhere: :mod:`replica`);
3. if the node holds more than it may give (a smaller reported capacity),
   evicts the lowest priority until it does not.

A pure function: ``node`` as in :mod:`capacity`, each container also with
``base_cpus``/``base_memory_mb`` (its service's size), ``latency_ms``
(measured; None: unknown, left alone), ``objective_ms`` (None: none) and
``seq`` (newer is higher).  Returns decisions, each a dict with
``action`` (grow, shrink, evict, blocked), ``id``, ``service``, the new
``cpus``/``memory_mb`` (grow, shrink), ``to`` (evict) and ``reason``.
"""
from mec_conpaas.policies import capacity
from mec_conpaas.policies import eviction

EPS = 1e-9


def _units(c, unit_cpus):
    return round((c["cpus"] - c.get("base_cpus", c["cpus"])) / unit_cpus)


def plan(name, node, unit_cpus, unit_memory_mb, shrink_below=0.5, max_units=8,
         cluster=None, dist=None):
    node = dict(node, containers={i: dict(c) for i, c in node["containers"].items()})
    cs = node["containers"]
    out = []
    for iid in sorted(cs):
        c = cs[iid]
        lat, obj = c.get("latency_ms"), c.get("objective_ms")
        if lat is None or obj is None or _units(c, unit_cpus) < 1:
            continue
        if lat < shrink_below * obj:
            c["cpus"] = round(c["cpus"] - unit_cpus, 6)
            c["memory_mb"] -= unit_memory_mb
            out.append({"action": "shrink", "id": iid, "service": c["service"],
                        "cpus": c["cpus"], "memory_mb": c["memory_mb"],
                        "reason": "latency %.1f ms is below %.0f%% of the %.1f ms "
                        "objective: one unit back to %s" % (
                            lat, shrink_below * 100, obj, name)})
    missing = sorted((i for i, c in cs.items()
                      if c.get("latency_ms") is not None
                      and c.get("objective_ms") is not None
                      and c["latency_ms"] > c["objective_ms"]),
                     key=lambda i: (-cs[i]["priority"], i))
    evicted = set()
    for iid in missing:
        if iid in evicted:
            continue
        c = cs[iid]
        why = "latency %.1f ms misses the %.1f ms objective" % (
            c["latency_ms"], c["objective_ms"])
        if _units(c, unit_cpus) >= max_units:
            out.append({"action": "blocked", "id": iid, "service": c["service"],
                        "reason": why + ", and it has grown by the most units "
                        "allowed (%d)" % max_units})
            continue
        if not capacity.fits(node, unit_cpus, unit_memory_mb):
            room = eviction.victims(
                {**node, "containers": {i: x for i, x in cs.items()
                                        if x["service"] != c["service"]
                                        or i == iid}},
                unit_cpus, unit_memory_mb, c["priority"])
            where = room and eviction.targets(
                name, {i: cs[i] for i in room}, cluster or {}, dist or {})
            if not room or any(n is None for n in where.values()):
                out.append({"action": "blocked", "id": iid, "service": c["service"],
                            "reason": why + ", and %s has no room for a unit: %s"
                            % (name, capacity.describe(node))})
                continue
            for v in room:
                out.append(_evict(v, cs.pop(v), where[v], "to grow %s (priority %d, "
                                  "%s) on %s" % (c["service"], c["priority"], why,
                                                 name)))
                evicted.add(v)
        c["cpus"] = round(c["cpus"] + unit_cpus, 6)
        c["memory_mb"] += unit_memory_mb
        out.append({"action": "grow", "id": iid, "service": c["service"],
                    "cpus": c["cpus"], "memory_mb": c["memory_mb"],
                    "reason": why + ": one unit more on %s" % name})
    if capacity.short(node):
        order = sorted(cs, key=lambda i: (cs[i]["priority"], -cs[i].get("seq", 0), i))
        for v in order:
            if not capacity.short(node):
                break
            where = eviction.targets(name, {v: cs[v]}, cluster or {}, dist or {})
            out.append(_evict(v, cs.pop(v), where[v], "%s holds more than it may "
                              "give (%s)" % (name, capacity.describe(node))))
    return out


def _evict(iid, c, to, why):
    return {"action": "evict", "id": iid, "service": c["service"], "to": to,
            "reason": "evicted (priority %d, the lowest) %s; re-placed on %s" % (
                c["priority"], why, to or "no node: none has room")}
