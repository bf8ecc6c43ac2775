"""Capacity of a node and the QoS policies (ENORM's admission, priority,
auto-scaling and eviction; PiCasso's replica choice)."""
from oslo_config import cfg

capacity_group = cfg.OptGroup("capacity", title="What this node gives to instances")

capacity_opts = [
    cfg.FloatOpt("cpus", default=0.0, min=0.0,
                 help="""
CPU cores this node has for instances and its own work, in the unit of a
service's ``cpus`` (a CFS quota: 1.0 is one core of this machine).

Possible values:
* 0: the node's real core count (``os.cpu_count()``): what a deployed Pi
  reports;
* a positive number: an emulated capacity (``mec-conpaas-edge`` writes
  each access point's from the topology, a Raspberry Pi 3's 4 by default).

Related options:
* ``reserve_cpus``: the part of it never given to instances.
"""),
    cfg.IntOpt("memory_mb", default=0, min=0,
               help="""
Memory (MiB) this node has for instances and its own work.

Possible values:
* 0: the node's real memory (MemTotal of /proc/meminfo);
* a positive number: an emulated capacity (1024 for a Raspberry Pi 3).
"""),
    cfg.FloatOpt("reserve_cpus", default=0.5, min=0.0,
                 help="""
CPU cores kept for the node's own work (Wi-Fi access point, HAProxy, node
agent: ENORM's "basic service"): admission and auto-scaling never give
them to an instance, whatever its priority.

Possible values:
* 0 to ``cpus``.
"""),
    cfg.IntOpt("reserve_memory_mb", default=128, min=0,
               help="""
Memory (MiB) kept for the node's own work; never given to an instance.

Possible values:
* 0 to ``memory_mb``.
"""),
    cfg.StrOpt("cgroup_partition",
               help="""
The libvirt partition (parent cgroup) this node's containers are placed in,
e.g. ``/machine/mec-ap-1``, so the kernel holds them together to the
node's capacity less its reserve.

Possible values:
* unset (the default): libvirt's default partition, ``/machine`` (a
  deployed node's containers share the whole machine, which is its
  capacity);
* a path: ``mec-conpaas-edge`` sets one per emulated access point and
  creates it (edge/partition.py); it must exist in every cgroup v1
  hierarchy before a container starts (libvirt creates none but
  ``/machine``).
"""),
]

qos_group = cfg.OptGroup("qos", title="Per-service QoS policies (manager)")

qos_opts = [
    cfg.IntOpt("default_priority", default=50, min=0, max=100,
               help="""
Priority of a service created without ``--priority``: higher values are
admitted first and evicted last.

Possible values:
* 0 (evicted first) to 100.
"""),
    cfg.FloatOpt("autoscale_interval", default=0.0, min=0.0,
                 help="""
Seconds between the manager's auto-scaling rounds (grow a container by a
unit when its service misses its latency objective, shrink it when the
objective is comfortably met, evict the lowest priority when the node is
short).

Possible values:
* 0: no rounds (the default: nothing is resized behind an operator's back);
* a positive number of seconds, e.g. 5.

Related options:
* ``unit_cpus``, ``unit_memory_mb``, ``shrink_below``.
"""),
    cfg.FloatOpt("unit_cpus", default=0.25, min=0.01,
                 help="""
CPU of one auto-scaling unit (ENORM's is a core of a Pi: 0.25 here is a
quarter of one of this machine's cores, see README "Capacity and QoS").
"""),
    cfg.IntOpt("unit_memory_mb", default=64, min=4,
               help="""
Memory (MiB) of one auto-scaling unit (ENORM's is 200 MB).
"""),
    cfg.FloatOpt("shrink_below", default=0.5, min=0.0, max=1.0,
                 help="""
A grown container shrinks by a unit when its latency is below this
fraction of the objective (comfortably met); between it and the objective
nothing changes, so a container does not grow and shrink in turn.
"""),
    cfg.IntOpt("max_units", default=8, min=0,
               help="""
Units a container may grow by above its service's size.
"""),
    cfg.FloatOpt("exhausted_above", default=0.8, min=0.0, max=1.0,
                 help="""
A node whose measured exhaustion (the larger of its CPU busy fraction and
its memory in use, of its capacity) is above this is exhausted: a new
replica of a service there goes to the nearest node that is not (PiCasso:
a local replica on an exhausted Pi makes latency worse).
"""),
]


def register_opts(conf):
    conf.register_group(capacity_group)
    conf.register_opts(capacity_opts, group=capacity_group)
    conf.register_group(qos_group)
    conf.register_opts(qos_opts, group=qos_group)


def list_opts():
    return {capacity_group: capacity_opts, qos_group: qos_opts}
