"""ENORM on the embedded edge: priority admission that evicts a lower
priority to another access point (make-before-break: its users see no
failure), the access point's reserve never given away, and auto-scaling
that grows a container by a unit when its service misses its latency
objective and shrinks it back when the load goes."""
import glob
import json
import os
import time

import pytest

from mec_conpaas import exception
from mec_conpaas.agents.node import cgroups
from mec_conpaas.agents.node import httpserver
from mec_conpaas.cli.client import ApiError
from mec_conpaas.conf import node_agent as node_conf
from mec_conpaas.edge import loadgen
from mec_conpaas.manager import topology
from tests.functional.conftest import Load
from tests.functional.conftest import client_get
from tests.functional.conftest import wait_op

AGENT_PORT = {o.name: o.default for o in node_conf.node_opts}["bind_port"]


def wait_for(what, predicate, timeout=60, interval=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(interval)


def capacity(admin, ap):
    return (admin.node(ap)["report"] or {}).get("capacity") or {}


def set_capacity(edge, admin, ap, **cap):
    edge.set_capacity(ap, **cap)
    want = dict(topology.capacity(edge.topo["nodes"][ap]), **cap)
    wait_for("%s to report capacity %s" % (ap, want), lambda: all(
        capacity(admin, ap).get(k) == v for k, v in want.items())
        and admin.node(ap)["state"] == "up")


def cgroup_dirs(instance_id):
    """The instance's cgroups (cpu, memory), found from its init process
    (under its access point's partition: edge/partition.py)."""
    [freezer] = glob.glob("/sys/fs/cgroup/freezer/machine/*.partition/"
                          "*-mec-%s.libvirt-lxc" % instance_id)
    pid = int(open(os.path.join(freezer, "cgroup.procs")).read().split()[0])
    return cgroups.dirs(pid)


def cgroup_limits(instance_id):
    """The instance's limits as its cgroups have them (read on the host)."""
    return cgroups.limits(cgroup_dirs(instance_id))


def partition_of(edge, ap):
    with open(edge.path("nodes", ap, "partition.json")) as f:
        return json.load(f)


def test_an_ap_partition_holds_its_containers_to_capacity_less_reserve(edge, admin,
                                                                       small_ap1):
    """The access point's capacity is the kernel's: its containers' cgroups
    are under its partition, whose CPU quota and memory limit are its
    capacity less reserve, and follow a new capacity."""
    part = partition_of(edge, "ap-1")
    assert cgroups.limits(part) == {"cpus": 1.0, "memory_mb": 384}  # small_ap1's
    wait_op(admin, admin.create_service("web", "held", node="ap-1"))
    try:
        [inst] = admin.service("held")["instances"]
        own = cgroup_dirs(inst["id"])
        for c in ("cpu", "memory"):
            assert os.path.dirname(own[c]) == part[c], (own, part)
        # the container's own limits sit inside its partition's
        assert cgroup_limits(inst["id"])["memory_mb"] <= 384
        # another capacity: the partition follows, the container runs on
        set_capacity(edge, admin, "ap-1", cpus=2.0, memory_mb=640)
        assert cgroups.limits(part) == {"cpus": 1.5, "memory_mb": 512}
        assert admin.service("held")["state"] == "RUNNING"
        assert client_get(edge, "ap-1", admin.service("held")["port"])["status"] == 200
    finally:
        wait_op(admin, admin.delete_service("held"))


def ops_of(admin, service, kind):
    return [o for o in admin.operations() if o["service"] == service
            and o["kind"] == kind]


@pytest.fixture
def small_ap1(edge, admin):
    """ap-1 with room for two default instances (1.5 cpus and 512 MiB, of
    which the reserve keeps 0.5 and 128), back to the topology's after."""
    assert not [i for s in admin.services(all_tenants=True) for i in s["instances"]
                if i["node"] == "ap-1"], "ap-1 must start empty"
    set_capacity(edge, admin, "ap-1", cpus=1.5, memory_mb=512)
    yield
    set_capacity(edge, admin, "ap-1")


def test_high_priority_evicts_low_priority_to_another_ap(edge, admin, small_ap1):
    reserve = topology.PI3_CAPACITY
    wait_op(admin, admin.create_service("web", "low", node="ap-1", count=2,
                                        qos={"priority": 10}))
    low = admin.service("low")
    assert sorted(i["node"] for i in low["instances"]) == ["ap-1", "ap-1"]
    load = Load(edge, "ap-1", low["port"], interval=0.01)
    try:
        # Full: a third instance of any priority is refused before anything
        # starts (slots remain: it is the size that does not fit) ...
        with pytest.raises(ApiError, match="room for 0"):
            admin.scale("low", 3, node="ap-1")
        # ... and the node agent itself refuses to give the reserve away.
        token = open(edge.path("nodes", "ap-1", "node-agent.token")).read().strip()
        node = admin.node("ap-1")
        iid = low["instances"][0]["id"]
        with pytest.raises(exception.NodeError, match="cannot give"):
            httpserver.call("POST", "http://%s:%d/v1/instances/%s/resize" % (
                node["address"], AGENT_PORT, iid), token,
                {"cpus": 1.5 - reserve["reserve_cpus"], "memory_mb": 128})
        cap = capacity(admin, "ap-1")
        assert cap["held_cpus"] <= cap["cpus"] - cap["reserve_cpus"]
        assert cap["held_memory_mb"] <= cap["memory_mb"] - cap["reserve_memory_mb"]
        # A high priority arriving on the full AP: admitted, the newest low
        # instance is re-placed on the nearest other AP first.
        res = admin.create_service("web", "high", node="ap-1", qos={"priority": 90})
        assert res["operation"]["params"]["after"], res
        wait_op(admin, res)
        [evict] = ops_of(admin, "low", "evict")
        assert evict["state"] == "SUCCEEDED", evict
        assert "evicted from ap-1 to ap-2" in evict["step"], evict
        assert "priority 10" in evict["step"] and "high (priority 90)" in evict["step"]
        low = admin.service("low")
        assert sorted(i["node"] for i in low["instances"]) == ["ap-1", "ap-2"]
        assert [i["node"] for i in admin.service("high")["instances"]] == ["ap-1"]
        assert admin.service("high")["qos"]["priority"] == 90
    finally:
        summary = loadgen.summarize(load.stop())
        for name in ("high", "low"):
            if name in {s["name"] for s in admin.services()}:
                wait_op(admin, admin.delete_service(name))
    assert summary["requests"] > 0 and summary["failed"] == 0, summary


def test_missed_objective_grows_a_unit_then_shrinks_back(tmp_path, edge, admin):
    edge.master_groups["qos"] = {"autoscale_interval": 1, "unit_cpus": 0.25,
                                 "unit_memory_mb": 32, "max_units": 2}
    manager = edge.restart_manager()
    try:
        # Requests computing 20 ms each on 4 slots: a closed loop of 4
        # users keeps more than the default 0.5 cores busy.
        bundle = loadgen.slow_web_bundle(str(tmp_path / "hot.tar.gz"), workers=4,
                                         hold=0.02, cpu=True)
        wait_op(admin, admin.create_service("web", "hot", node="ap-2", bundle=bundle,
                                            qos={"latency_objective_ms": 10}))
        svc = admin.service("hot")
        [inst] = svc["instances"]
        base = (inst["cpus"], inst["memory_mb"])
        assert cgroup_limits(inst["id"]) == {"cpus": base[0], "memory_mb": base[1]}
        load = Load(edge, "ap-2", svc["port"], interval=0.0, clients=4)
        try:
            grown = wait_for("a grow", lambda: [
                o for o in ops_of(admin, "hot", "resize")
                if o["state"] == "SUCCEEDED" and o["params"]["change"] == "grow"],
                timeout=90)
        finally:
            summary = loadgen.summarize(load.stop())
        assert "misses the 10.0 ms objective" in grown[0]["step"], grown
        now = admin.service("hot")["instances"][0]
        assert now["cpus"] >= base[0] + 0.25 and now["memory_mb"] >= base[1] + 32
        assert summary["failed"] == 0, summary
        # The load gone: one unit back per round, down to the service's size.
        wait_for("shrunk back", lambda: admin.service("hot")["instances"][0]["cpus"]
                 == base[0] and not admin.service("hot")["operation"], timeout=90)
        shrinks = [o for o in ops_of(admin, "hot", "resize")
                   if o["params"]["change"] == "shrink"]
        assert shrinks and all("below 50% of the 10.0 ms objective" in o["step"]
                               for o in shrinks), shrinks
        assert cgroup_limits(inst["id"]) == {"cpus": base[0], "memory_mb": base[1]}
    finally:
        # A manager that exited says how (a negative code: killed by that signal).
        print("manager exit status after the restart:", manager.poll())
        if "hot" in {s["name"] for s in admin.services()}:
            wait_op(admin, admin.delete_service("hot"))
        edge.master_groups.pop("qos")
        edge.restart_manager()
