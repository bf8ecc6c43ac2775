"""Replica choice, after PiCasso: when an instance is exhausted, add the
new replica locally or on another node, from the nodes' measured
exhaustion.  PiCasso found that a local replica on an exhausted Pi makes
latency worse: the replica then competes with the exhausted instance for
the same cores.

Pure: ``nodes`` is ``{name: {"exhaustion": 0..1 or None, "fits": bool}}``
(``fits``: the replica's size fits there, see :mod:`capacity`); ``dist``
as in :func:`placement.distances`.
"""


def exhaustion(report, node_capacity=None):
    """How exhausted a node is, 0..1: the larger of its CPU busy fraction
    and its memory in use, from its heartbeat report; None if unknown."""
    if not report:
        return None
    parts = []
    if report.get("cpu_percent") is not None:
        parts.append(float(report["cpu_percent"]) / 100.0)
    mem = report.get("memory") or {}
    if mem.get("total_bytes"):
        parts.append(1.0 - mem.get("available_bytes", 0) / mem["total_bytes"])
    cap = node_capacity or report.get("capacity") or {}
    if cap.get("memory_mb") and cap.get("held_memory_mb") is not None:
        parts.append((cap["held_memory_mb"] + cap.get("reserve_memory_mb", 0))
                     / cap["memory_mb"])
    return round(max(parts), 3) if parts else None


def choose(local, nodes, dist, exhausted_above=0.8):
    """``(node, reason)`` for the new replica of an instance on ``local``:
    ``local`` while it is not exhausted and the replica fits there, else
    the nearest node that is not exhausted and where it fits; ``local``
    again if no other does (and it fits), else None."""
    here = nodes.get(local, {})
    ex = here.get("exhaustion")
    if here.get("fits") and (ex is None or ex <= exhausted_above):
        return local, "local replica: %s is not exhausted (%s)" % (
            local, "unknown" if ex is None else "%.0f%%" % (ex * 100))
    remote = [n for n, v in nodes.items()
              if n != local and v.get("fits")
              and (v.get("exhaustion") is None or v["exhaustion"] <= exhausted_above)]
    if remote:
        best = min(remote, key=lambda n: (dist.get(local, {}).get(n, 0.0),
                                          nodes[n].get("exhaustion") or 0.0, n))
        return best, "remote replica on %s: %s is %s" % (
            best, local, "exhausted (%.0f%% > %.0f%%)" % (ex * 100, exhausted_above * 100)
            if ex is not None and ex > exhausted_above else "full")
    if here.get("fits"):
        return local, "local replica: %s is exhausted but no other node can take it" % local
    return None, "no node can take a replica"
