"""An emulated access point's capacity, enforced by the kernel: a parent
cgroup (libvirt's "partition") per access point that all its containers
live in.

Every emulated access point of the embedded edge runs its containers on
this one machine; without a parent cgroup only each container's own limits
and admission's arithmetic kept an access point within the capacity its
topology gives it (a Raspberry Pi 3's 4 cores and 1 GiB by default).  With
it the kernel does: the partition's CPU quota and memory limit are the
access point's capacity less its reserve (what instances may hold at most,
``policies/capacity.allocatable``), so the containers of one access point
together never take more, and the reserve stays for its own work.

libvirt places a domain with ``<resource><partition>/machine/NAME`` under
``/machine/NAME.partition`` from the root of each v1 hierarchy, and never
creates a partition other than ``/machine`` (libvirt's cgroups page,
"Using custom partitions"): so the edge creates it, before the access
point's first container, in every hierarchy libvirt uses (a missing one
fails the container's start), with ``cpuset`` copied from its parent (an
empty cpuset takes no task).  It is removed when the edge goes down, after
its containers.
"""
import os

from mec_conpaas import exception
from mec_conpaas.agents.node import cgroups
from mec_conpaas.policies import capacity as capacity_policy

# The v1 controllers libvirt puts a domain in (vircgroupv1.c); name=systemd
# is never written by libvirt.
LIBVIRT_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer",
                       "blkio", "net_cls", "perf_event")


def name(prefix, ap):
    """The partition of an access point, as the domain XML names it
    (unique per edge: two edges of different prefixes share the kernel)."""
    return "/machine/%s%s" % (prefix, ap)


def _mounts():
    """``{controller: mount point}`` of the mounted v1 hierarchies libvirt
    uses."""
    mounts = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            _dev, point, kind, opts = line.split()[:4]
            if kind != "cgroup":
                continue
            for c in opts.split(","):
                if c in LIBVIRT_CONTROLLERS:
                    mounts[c] = point
    return mounts


def dirs(partition):
    """``{controller: directory}`` of ``partition``: from each hierarchy's
    root (libvirt takes a partition's absolute path as such, wherever
    libvirtd itself is: seen here with libvirtd's memory cgroup nested and
    its domains' at the root), each component after the first with
    libvirt's ``.partition`` suffix."""
    parts = [p for p in partition.split("/") if p]
    parts = parts[:1] + [p if "." in p else p + ".partition" for p in parts[1:]]
    return {c: os.path.join(point, *parts) for c, point in _mounts().items()}


def _copy(parent, child, key):
    with open(os.path.join(parent, key)) as f:
        value = f.read().strip()
    with open(os.path.join(child, key), "w") as f:
        f.write(value)


def _makedirs(path, cpuset):
    """mkdir -p, giving each new cpuset level its parent's cpus and mems."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    _makedirs(parent, cpuset)
    os.mkdir(path)
    if cpuset:
        for key in ("cpuset.cpus", "cpuset.mems"):
            _copy(parent, path, key)


def create(partition, cap):
    """Create (or update) ``partition`` with the limits of ``cap``
    (``{"cpus", "memory_mb", "reserve_cpus", "reserve_memory_mb"}``);
    returns its directories."""
    out = dirs(partition)
    for c, path in out.items():
        _makedirs(path, c == "cpuset")
    limit(out, cap)
    return out


def limit(d, cap):
    """The partition's CPU quota and memory limit: what instances may hold
    at most (capacity less reserve)."""
    cpus, memory_mb = capacity_policy.allocatable(cap)
    if "cpu" not in d or "memory" not in d:
        raise exception.NodeError("no v1 cpu or memory hierarchy: an access "
                                  "point's capacity cannot be enforced")
    cgroups.resize({"cpu": d["cpu"], "memory": d["memory"]}, cpus, memory_mb)


def remove(partition, dirs_=None):
    """Remove the partition's directories (its containers must be gone);
    True if none is left.  ``dirs_``: as ``create`` returned them."""
    left = False
    for path in (dirs_ or dirs(partition)).values():
        # a container's own cgroup libvirt had no time to remove: empty
        # ones go too (one with a task in it stays, and so does the partition)
        for sub, _subdirs, _files in os.walk(path, topdown=False):
            try:
                os.rmdir(sub)
            except FileNotFoundError:
                pass
            except OSError:
                left = True
    return not left
