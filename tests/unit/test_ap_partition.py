"""An emulated access point's parent cgroup (edge/partition.py) on the
real cgroup v1 hierarchies: created where libvirt looks for it, with the
capacity less reserve as its limits and its parent's cpuset, and removed
only once nothing runs in it."""
import os
import subprocess

import pytest

from mec_conpaas.agents.node import cgroups
from mec_conpaas.edge import partition

CAP = {"cpus": 2.0, "memory_mb": 512, "reserve_cpus": 0.5, "reserve_memory_mb": 128}


@pytest.fixture
def top():
    """A top level of our own (libvirt's would be /machine, shared)."""
    name = "mec-unit-%d" % os.getpid()
    yield "/%s/ap-1" % name
    for path in partition.dirs("/" + name).values():
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass


def test_partition_limits_and_removal(top):
    if not os.path.isdir(os.path.join(cgroups.ROOT, "cpuset")):
        pytest.skip("no cgroup v1 hierarchies")
    made = partition.create(top, CAP)
    # libvirt's naming: the first component as is, the others .partition
    assert all(p.endswith("/ap-1.partition") for p in made.values())
    assert {"cpu", "cpuset", "memory", "freezer"} <= set(made)
    assert cgroups.limits(made) == {"cpus": 1.5, "memory_mb": 384}
    with open(os.path.join(os.path.dirname(made["cpuset"]), "cpuset.cpus")) as f:
        parent_cpus = f.read()
    with open(os.path.join(made["cpuset"], "cpuset.cpus")) as f:
        assert f.read() == parent_cpus
    # again with another capacity: the same directories, new limits
    assert partition.create(top, dict(CAP, memory_mb=640)) == made
    assert cgroups.limits(made)["memory_mb"] == 512
    # a "container" inside: the partition stays while it runs
    inner = {c: os.path.join(made[c], "x.libvirt-lxc") for c in ("cpu", "memory")}
    proc = subprocess.Popen(["sleep", "60"])
    try:
        for path in inner.values():
            os.mkdir(path)
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(proc.pid))
        assert not partition.remove(top, dirs_=made)
        assert os.path.isdir(made["cpu"])
    finally:
        proc.kill()
        proc.wait()
    # gone (the empty container cgroup with it) once nothing runs there
    for _ in range(50):
        if partition.remove(top, dirs_=made):
            break
    assert not any(os.path.exists(p) for p in made.values())
