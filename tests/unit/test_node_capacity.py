"""The node agent's side: its capacity and reserve, and a container's
limits resized live on real cgroups (v1) holding a real process."""
import os
import subprocess

import pytest

from mec_conpaas import exception
from mec_conpaas.agents.node import capacity
from mec_conpaas.agents.node import cgroups

needs_cgroups = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.isdir(os.path.join(cgroups.ROOT, "cpu")),
    reason="needs root and cgroup v1 cpu/memory hierarchies")


def test_capacity_reports_and_keeps_the_reserve(conf):
    conf.set_override("cpus", 1.5, group="capacity")
    conf.set_override("memory_mb", 512, group="capacity")
    try:
        cap = capacity.Capacity(conf)
        sizes = {"a": {"cpus": 0.5, "memory_mb": 128}}
        assert cap.report(sizes) == {"cpus": 1.5, "memory_mb": 512, "reserve_cpus": 0.5,
                                     "reserve_memory_mb": 128, "held_cpus": 0.5,
                                     "held_memory_mb": 128}
        cap.check(sizes, "b", 0.5, 256)  # exactly what is left
        with pytest.raises(exception.InsufficientCapacity, match="cannot give 0.51"):
            cap.check(sizes, "b", 0.51, 128)
        # Its own size is not counted twice when it grows.
        cap.check(sizes, "a", 1.0, 384)
        with pytest.raises(exception.InsufficientCapacity, match="0.50 cpus and "
                           "128 MiB reserved"):
            cap.check(sizes, "a", 1.25, 128)
    finally:
        conf.clear_override("cpus", group="capacity")
        conf.clear_override("memory_mb", group="capacity")
    # Unset: the machine's own cores and memory, as a deployed node reports.
    real = capacity.Capacity(conf)
    assert (real.cpus, real.memory_mb) == (float(os.cpu_count()), capacity.host_memory_mb())


@needs_cgroups
def test_resize_live_grows_and_shrinks_a_process_cgroups():
    name = "mec-test-resize-%d" % os.getpid()
    d = {c: os.path.join(cgroups.ROOT, c, name) for c in ("cpu", "memory")}
    proc = None
    try:
        for path in d.values():
            os.makedirs(path)
        proc = subprocess.Popen(["sleep", "60"])
        for path in d.values():
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(proc.pid))
        assert cgroups.dirs(proc.pid) == d
        cgroups.resize(d, 0.5, 128)
        assert cgroups.limits(d) == {"cpus": 0.5, "memory_mb": 128}
        cgroups.resize(d, 0.75, 192)  # grow: memsw first
        assert cgroups.limits(d) == {"cpus": 0.75, "memory_mb": 192}
        cgroups.resize(d, 0.5, 128)  # shrink: memory first
        assert cgroups.limits(d) == {"cpus": 0.5, "memory_mb": 128}
    finally:
        if proc:
            proc.kill()
            proc.wait()
        for path in d.values():
            if os.path.isdir(path):
                os.rmdir(path)
