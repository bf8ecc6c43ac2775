"""Admission, after ENORM's handshake: a new instance is admitted on a
node only if its resources *and* its priority allow.

It fits in what is free (capacity less the node's reserve less what its
containers hold): admitted.  It does not, but evicting containers of lower
priority makes room, and those can be re-placed on other nodes: admitted,
with those evictions.  Otherwise refused, with the reason.  The reserve is
never counted as free, whatever the priority.
"""
import dataclasses

from mec_conpaas.policies import capacity
from mec_conpaas.policies import eviction


@dataclasses.dataclass
class Decision:
    admit: bool
    reason: str
    # instance id -> node it is re-placed on (evicted to make room)
    evict: dict = dataclasses.field(default_factory=dict)


def admit(name, node, cpus, memory_mb, priority, cluster=None, dist=None):
    """Whether an instance of ``cpus``/``memory_mb`` and ``priority`` may
    start on node ``name`` (``node`` as in :mod:`capacity`); ``cluster``
    and ``dist`` (as for :func:`eviction.targets`) say where evicted
    containers could go: without them nothing is evicted."""
    if cpus > capacity.allocatable(node)[0] + 1e-9 or \
            memory_mb > capacity.allocatable(node)[1]:
        return Decision(False, "%s cannot hold %.2f cpus and %d MiB even empty: %s"
                        % (name, cpus, memory_mb, capacity.describe(node)))
    if capacity.fits(node, cpus, memory_mb):
        return Decision(True, "fits on %s: %s" % (name, capacity.describe(node)))
    evict = eviction.victims(node, cpus, memory_mb, priority)
    if not evict:
        return Decision(False, "%s is full for priority %d: %s, and evicting "
                        "every service of lower priority would not free enough"
                        % (name, priority, capacity.describe(node)))
    where = eviction.targets(name, {i: node["containers"][i] for i in evict},
                             cluster or {}, dist or {})
    homeless = sorted(i for i, n in where.items() if n is None)
    if homeless:
        return Decision(False, "%s is full for priority %d: %s; instance(s) %s of "
                        "lower priority could make room but no other node can "
                        "take them" % (name, priority, capacity.describe(node),
                                       ", ".join(homeless)))
    return Decision(True, "%s is full (%s): evicting %s of lower priority to "
                    "another node" % (name, capacity.describe(node), ", ".join(
                        "%s (priority %d) to %s" % (
                            i, node["containers"][i]["priority"], where[i])
                        for i in evict)), where)
