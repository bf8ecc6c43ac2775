"""Follow-the-user: keep a service one short hop from where its users are.

A pure function of observed state, after seed 002's §5.2: the cost of
serving a service's users from node ``n`` is proportional to their latency
to ``n`` and inversely proportional to ``n``'s remaining capacity, subject
to a latency threshold (the service's latency objective).  Hysteresis keeps
services from ping-ponging after oscillating users: a service moves only
when it has stayed put for ``min_dwell_s``, only for users that have been
at their access point for ``min_dwell_s``, and only for a relative gain of
at least ``min_gain``.

Interface::

    decide(service, users, dist, capacity, knobs, now) -> decision | None

``service``: ``{"name", "home", "instances": [node of each active instance],
"busy": bool, "last_move": time or None}``.
``users``: ``[{"user", "ap", "since"}]``: the service's users, where each
is attached and since when (``now``'s clock).
``dist``: ``{a: {b: one-way ms}}`` (placement.distances).
``capacity``: ``{node: {"max_instances", "used", "up", "schedulable"}}``.
``knobs``: policies.qos.knobs.

A decision is ``{"action": "migrate", "to": node, "reason": text}`` (move
the home's instances there, make-before-break), or None: stay.  A standby
already at ``node`` (ahead_handover) serves the users there meanwhile; the
migration moves the home's role and state, and the standby, redundant
then, is dropped.
"""
from mec_conpaas.policies import placement


def settled_users(users, knobs, now):
    """Users that have been at their access point for the dwell time."""
    return [u for u in users if now - u["since"] >= knobs["min_dwell_s"]]


def mean_latency(users, node, dist):
    return sum(dist[u["ap"]].get(node, float("inf")) for u in users) / len(users)


def remaining(node, capacity, instances):
    """Fraction of ``node``'s slots left for this service, counting the
    slots its own instances there already hold as its own."""
    cap = capacity[node]
    mine = instances.count(node)
    return (cap["max_instances"] - cap["used"] + mine) / max(1, cap["max_instances"])


def cost(users, node, dist, capacity, instances, hop_ms=1.0):
    """Seed 002's cost: latency over remaining capacity.  ``hop_ms`` (the
    access hop every request pays anyway) keeps a local node's cost above
    zero, so capacity still separates two local candidates."""
    left = remaining(node, capacity, instances)
    if left <= 0:
        return float("inf")
    return (mean_latency(users, node, dist) + hop_ms) / left


def decide(service, users, dist, capacity, knobs, now):
    if service["busy"] or not service["instances"] or not users:
        return None
    if service["last_move"] is not None and \
            now - service["last_move"] < knobs["min_dwell_s"]:
        return None
    settled = settled_users(users, knobs, now)
    if not settled:
        return None
    home, instances = service["home"], service["instances"]
    candidates = [n for n in capacity if placement.placeable(capacity[n])
                  and n in dist and (n in instances or placement.free_slots(
                      capacity[n]) >= instances.count(home))]
    within = [n for n in candidates
              if mean_latency(settled, n, dist) <= knobs["latency_objective_ms"]]
    pool = within or candidates
    if not pool:
        return None
    costs = {n: cost(settled, n, dist, capacity, instances) for n in pool}
    best = min(pool, key=lambda n: (costs[n], n != home, n))
    if best == home:
        return None
    here = cost(settled, home, dist, capacity, instances) if home in capacity \
        else float("inf")
    if costs[best] > here * (1 - knobs["min_gain"]):
        return None
    where = sorted({u["ap"] for u in settled})
    reason = ("follow-the-user: %d user(s) at %s; mean latency %.1f -> %.1f ms, "
              "cost %.2f -> %.2f" % (
                  len(settled), ",".join(where), mean_latency(settled, home, dist)
                  if home in dist else float("inf"),
                  mean_latency(settled, best, dist), here, costs[best]))
    return {"action": "migrate", "to": best, "reason": reason}
