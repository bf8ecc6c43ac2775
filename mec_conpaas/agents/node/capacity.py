"""What this node has for instances, and the reserve it keeps.

Reported with every heartbeat (``report["capacity"]``) so the manager's
admission and auto-scaling decide on it; checked here again before a
container starts or grows, so the reserve for the node's own work (the
Wi-Fi AP, HAProxy, this agent: ENORM's basic service) is never given to
an instance even if the manager's view is stale.  A deployed node reports
its real cores and memory; an emulated access point the ones its
topology gives it (``[capacity]``).
"""
import os

from mec_conpaas import exception
from mec_conpaas.policies import capacity as policy


def host_memory_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


class Capacity:

    def __init__(self, conf):
        opts = conf.capacity
        self.cpus = opts.cpus or float(os.cpu_count() or 1)
        self.memory_mb = opts.memory_mb or host_memory_mb()
        self.reserve_cpus = min(opts.reserve_cpus, self.cpus)
        self.reserve_memory_mb = min(opts.reserve_memory_mb, self.memory_mb)

    def node(self, sizes):
        """The policies' view (policies/capacity.py) of this node holding
        containers of ``sizes``: ``{id: {"cpus", "memory_mb"}}``."""
        return {"cpus": self.cpus, "memory_mb": self.memory_mb,
                "reserve_cpus": self.reserve_cpus,
                "reserve_memory_mb": self.reserve_memory_mb,
                "containers": {i: {"cpus": s.get("cpus") or 0.0,
                                   "memory_mb": s.get("memory_mb") or 0,
                                   "priority": 0, "service": i}
                               for i, s in sizes.items()}}

    def report(self, sizes):
        node = self.node(sizes)
        held_cpus, held_mem = policy.held(node)
        return {"cpus": self.cpus, "memory_mb": self.memory_mb,
                "reserve_cpus": self.reserve_cpus,
                "reserve_memory_mb": self.reserve_memory_mb,
                "held_cpus": round(held_cpus, 4), "held_memory_mb": held_mem}

    def check(self, sizes, instance_id, cpus, memory_mb):
        """InsufficientCapacity unless a container ``instance_id`` of
        ``cpus``/``memory_mb`` fits beside the others in ``sizes``
        (its own current size not counted)."""
        node = self.node(sizes)
        if not policy.fits(node, float(cpus), int(memory_mb), without=(instance_id,)):
            raise exception.InsufficientCapacity(
                "this node cannot give %.2f cpus and %d MiB to instance %s: %s"
                % (float(cpus), int(memory_mb), instance_id, policy.describe(
                    {**node, "containers": {i: c for i, c in node["containers"].items()
                                            if i != instance_id}})))
