"""A container's CPU and memory limits, read and changed live through its
cgroups (v1), as ENORM's auto-scaling does.

Written straight to the cgroup files of the container's init process (the
cgroups libvirt made for the domain, whether the lxc backend or nova
defined it), not through a libvirt call: a resize of a running container
is two or three small writes, which keeps an auto-scaling round over 128
containers well under a second.
"""
import os

from mec_conpaas import exception

ROOT = "/sys/fs/cgroup"
MIN_QUOTA_US = 1000


def dirs(pid):
    """``{controller: cgroup directory}`` of a process, for cpu and
    memory (v1 hierarchies; a controller co-mounted as ``cpu,cpuacct`` is
    found under either name)."""
    out = {}
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(","):
                if c in ("cpu", "memory"):
                    out[c] = os.path.join(ROOT, c, path.lstrip("/"))
    missing = {"cpu", "memory"} - set(out)
    if missing:
        raise exception.NodeError("process %d has no %s cgroup (v1): cannot "
                                  "read or change its limits" % (pid, " or ".join(sorted(missing))))
    return out


def _read(path):
    with open(path) as f:
        return int(f.read().strip())


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def limits(d):
    """``{"cpus", "memory_mb"}`` of a cgroup pair (``dirs``): its CFS quota
    in cores (None: unlimited) and its memory limit in MiB."""
    quota = _read(os.path.join(d["cpu"], "cpu.cfs_quota_us"))
    period = _read(os.path.join(d["cpu"], "cpu.cfs_period_us"))
    mem = _read(os.path.join(d["memory"], "memory.limit_in_bytes"))
    return {"cpus": None if quota < 0 else round(quota / period, 4),
            "memory_mb": mem // (1024 * 1024)}


def resize(d, cpus, memory_mb):
    """Set a cgroup pair's CPU quota to ``cpus`` cores and its memory limit
    to ``memory_mb`` MiB, live.  With swap accounting, the memory+swap
    limit moves with it (raised first when growing, lowered last when
    shrinking: the kernel refuses memsw below memory).  A shrink below
    what the container uses now fails with NodeError, limits unchanged."""
    period = _read(os.path.join(d["cpu"], "cpu.cfs_period_us"))
    mem = os.path.join(d["memory"], "memory.limit_in_bytes")
    memsw = os.path.join(d["memory"], "memory.memsw.limit_in_bytes")
    new = int(memory_mb) * 1024 * 1024
    old = _read(mem)
    order = [memsw, mem] if new > old else [mem, memsw]
    done = []
    try:
        for path in order:
            if os.path.exists(path):
                _write(path, new)
                done.append(path)
    except OSError as e:
        for path in reversed(done):
            try:
                _write(path, old)
            except OSError:
                pass
        raise exception.Conflict(
            "cannot set the memory limit to %d MiB: %s (the container uses "
            "more; it keeps %d MiB)" % (memory_mb, e.strerror, old // 2 ** 20)) from None
    _write(os.path.join(d["cpu"], "cpu.cfs_quota_us"),
           max(MIN_QUOTA_US, int(float(cpus) * period)))
