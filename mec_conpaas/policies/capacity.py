"""A node's capacity as the policies see it: pure arithmetic.

A node is ``{"cpus", "memory_mb", "reserve_cpus", "reserve_memory_mb",
"containers": {id: {"service", "priority", "cpus", "memory_mb", ...}}}``:
what it has, what it keeps for its own work (ENORM's basic service: the
Wi-Fi AP, HAProxy, the node agent) and what each container holds.  The
reserve is never part of what is free.
"""


def allocatable(node):
    """(cpus, memory_mb) instances may hold at most: capacity less reserve."""
    return (max(0.0, node["cpus"] - node.get("reserve_cpus", 0.0)),
            max(0, node["memory_mb"] - node.get("reserve_memory_mb", 0)))


def held(node, without=()):
    """(cpus, memory_mb) the node's containers (but ``without``) hold."""
    cs = [c for i, c in node.get("containers", {}).items() if i not in without]
    return (sum(c["cpus"] for c in cs), sum(c["memory_mb"] for c in cs))


def free(node, without=()):
    """(cpus, memory_mb) not held by a container nor reserved; negative
    when the node holds more than it has (a smaller reported capacity)."""
    (ac, am), (hc, hm) = allocatable(node), held(node, without)
    return (round(ac - hc, 6), am - hm)


def fits(node, cpus, memory_mb, without=()):
    fc, fm = free(node, without)
    return cpus <= fc + 1e-9 and memory_mb <= fm


def short(node):
    """Whether the containers hold more than the node may give."""
    fc, fm = free(node)
    return fc < -1e-9 or fm < 0


def describe(node):
    fc, fm = free(node)
    ac, am = allocatable(node)
    return "%.2f of %.2f cpus and %d of %d MiB free (%.2f cpus and %d MiB " \
           "reserved for the node's own work)" % (
               fc, ac, fm, am, node.get("reserve_cpus", 0.0),
               node.get("reserve_memory_mb", 0))
