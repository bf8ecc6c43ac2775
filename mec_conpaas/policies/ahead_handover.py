"""Ahead-of-handover: start a standby where a user is about to arrive.

Make-before-break's "before", done while the user is still at the old
access point: when a user's movement makes a next access point likely, a
standby instance of the service starts there, so that when the handover
happens the local proxy already has a local instance and the move costs
only the switch.  The standby is paid for (a slot) only while the
prediction holds; when it no longer does, the standby goes.

Prediction (``predict``) is a second-order Markov guess over the access
points: transitions seen so far from (previous AP, current AP) weigh most,
then transitions seen from the current AP, then the topology's adjacency
(a user walking on keeps going: a neighbour other than the one it came
from weighs 1, going back 0.25).  Pure functions; the manager keeps the
history (``record``) and turns decisions into scale operations.

Interface::

    decide(service, users, history, adjacency, knobs) -> [decision]

``service``: ``{"name", "home", "instances": [node of each active
instance], "standbys": [nodes of this policy's standbys], "busy": bool}``.
``users``: ``[{"user", "ap", "previous"}]`` (``previous``: the AP before,
or None).  ``history``: as built by :func:`record`.  ``adjacency``: ``{ap:
[neighbour aps]}``.  ``knobs``: policies.qos.knobs.

A decision is ``{"action": "standby", "node", "reason"}`` (scale up by one
on ``node``) or ``{"action": "drop_standby", "node", "reason"}`` (scale
down by one, the standby being the farthest from home).
"""

BACK_WEIGHT = 0.25
FIRST_ORDER_WEIGHT = 0.5


def record(history, previous, current, nxt):
    """Count a handover ``current`` -> ``nxt`` (``previous``: where the user
    was before ``current``, or None).  Returns ``history``, updated."""
    first = history.setdefault("first", {}).setdefault(current, {})
    first[nxt] = first.get(nxt, 0) + 1
    if previous is not None:
        key = "%s>%s" % (previous, current)
        second = history.setdefault("second", {}).setdefault(key, {})
        second[nxt] = second.get(nxt, 0) + 1
    return history


def predict(previous, current, history, adjacency):
    """``(most likely next AP, its probability)``, or ``(None, 0.0)``."""
    weights = {}
    for ap in adjacency.get(current, ()):
        weights[ap] = BACK_WEIGHT if ap == previous else 1.0
    for ap, n in history.get("first", {}).get(current, {}).items():
        weights[ap] = weights.get(ap, 0.0) + FIRST_ORDER_WEIGHT * n
    if previous is not None:
        for ap, n in history.get("second", {}).get(
                "%s>%s" % (previous, current), {}).items():
            weights[ap] = weights.get(ap, 0.0) + n
    weights.pop(current, None)
    total = sum(weights.values())
    if not total:
        return None, 0.0
    best = max(sorted(weights), key=lambda ap: weights[ap])
    return best, weights[best] / total


def decide(service, users, history, adjacency, knobs):
    if service["busy"] or not service["instances"]:
        return []
    standbys = list(service["standbys"])
    serving = [n for n in service["instances"]]
    for n in standbys:
        if n in serving:
            serving.remove(n)
    wanted = {}
    for u in users:
        nxt, p = predict(u.get("previous"), u["ap"], history, adjacency)
        if nxt is not None and p >= knobs["handover_probability"] \
                and nxt not in serving:
            wanted.setdefault(nxt, []).append((u["user"], u["ap"], p))
    here = {u["ap"] for u in users}
    out = []
    for node in sorted(standbys):
        if node not in wanted and node not in here:
            out.append({"action": "drop_standby", "node": node,
                        "reason": "ahead-of-handover: no user is predicted to "
                                  "move to %s any more" % node})
    total = len(service["instances"])
    for node, why in sorted(wanted.items()):
        if node in standbys:
            continue
        if total >= knobs["max_instances"]:
            break
        total += 1
        user, ap, p = why[0]
        out.append({"action": "standby", "node": node,
                    "reason": "ahead-of-handover: user %s at %s is likely (p=%.2f) "
                              "to move to %s next" % (user, ap, p, node)})
    return out
