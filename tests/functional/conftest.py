"""A real embedded edge for the functional tests.

One edge (3 access points, real libvirt LXC containers, real HAProxy,
latency on the links) is brought up per test session under its own
namespace prefix and networks, and torn down at the end; the teardown
checks that nothing it started is left behind.
"""
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from mec_conpaas.cli import client as client_mod
from mec_conpaas.edge import cluster
from mec_conpaas.edge import loadgen
from mec_conpaas.edge import slots
from mec_conpaas.edge.loadgen import ClientLoad as Load  # noqa: F401
from mec_conpaas.manager import topology as topology_mod

HERE = os.path.dirname(__file__)
PREFIX = "mct-"
ISOLATED = os.path.join(os.path.dirname(topology_mod.DEFAULT), "edge-topology-isolated.yaml")


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="functional tests need root")
        for item in items:
            if "functional" in str(item.fspath):
                item.add_marker(skip)
    # The chaos test last (a stable sort: the others keep their order), so
    # that nothing it leaves, if it fails, reaches another test.
    items.sort(key=lambda item: os.path.basename(str(item.fspath)) == "test_chaos.py")


def enrollment_file(state):
    """The test edge manager's [manager] openstack_enrollment_file."""
    return os.path.join(state, "master", "openstack-enrollment.json")


@pytest.fixture(scope="session")
def edge():
    state = tempfile.mkdtemp(prefix="mec-edge-test-")
    prefix, port, topology = slots.apply(PREFIX, 9690, ISOLATED, state)
    e = cluster.Edge(state, topology, prefix=prefix,
                     manager_port=port, manager_opts={
                         "max_bundle_size": 1024 * 1024,
                         "node_heartbeat_timeout": 6,
                         "health_timeout": 30,
                         # test_converge: retries and the sweep within a test
                         "operation_retry_delay": 1,
                         "orphan_sweep_interval": 3,
                         # Nothing re-placed behind the tests' backs (agents
                         # are killed on purpose); test_nodeloss sets it.
                         "node_lost_grace": 0,
                         # written by test_enrollment; read on each request
                         "openstack_enrollment_file": enrollment_file(state)},
                     log=lambda m: print("edge:", m), user_credentials=False)
    e.up()
    yield e
    e.down()
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True,
                               text=True).stdout
    assert prefix not in leftovers, "namespaces left behind: " + leftovers
    # Each access point's parent cgroup (edge/partition.py) goes with it.
    parts = glob.glob("/sys/fs/cgroup/*/**/machine/%s*.partition" % prefix,
                      recursive=True)
    assert not parts, "cgroup partitions left behind: %s" % parts
    # Isolation tables live in the access points' namespaces only.
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True,
                            text=True).stdout
    assert "mec_isolation" not in tables, "nftables tables left behind: " + tables
    procs = subprocess.run(["pgrep", "-af", state], capture_output=True,
                           text=True).stdout
    assert not procs.strip(), "processes left behind: " + procs
    # Keep the daemons' logs for post-mortems, one directory per edge slot:
    # runs at the same time have different slots, and overwrote each
    # other's logs in one shared directory.
    logs = os.environ.get("MEC_TEST_LOGS") or "/tmp/mec-test-logs" + (
        "-slot%d" % slots.current() if slots.current() else "")
    print("edge: the daemons' logs are in", logs)
    shutil.rmtree(logs, ignore_errors=True)
    shutil.copytree(os.path.join(state, "logs"), logs)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def admin(edge):
    token = open(edge.path("admin-token")).read().strip()
    return client_mod.Client(edge.manager_url(), token)


def new_tenant(edge, name):
    out = subprocess.run([edge._tool("mec-conpaas-manage"), "--config-file",
                          edge.path("master", "mec-conpaas.conf"), "token", "create",
                          "--tenant", name, "--user", name + "-user"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return client_mod.Client(edge.manager_url(), out)


def wait_op(client, result, timeout=180):
    op = client.wait(result["operation"]["id"], timeout)
    assert op["state"] == "SUCCEEDED", op
    return op


def containers(edge, ap):
    """Names of the libvirt domains really running on an access point."""
    sock = edge.path("nodes", ap, "libvirt", "run", "libvirt-sock")
    out = subprocess.run(["virsh", "-c", "lxc:///system?socket=" + sock, "list",
                          "--name"], capture_output=True, text=True, check=True).stdout
    return sorted(n[len("mec-"):] for n in out.split() if n.startswith("mec-"))


def state_file(edge, ap, instance_id, name):
    """A file of an instance's state directory, read where it is mounted:
    in the access point's mount namespace (its disk image)."""
    path = edge.path("nodes", ap, "instances", instance_id, "fs", "state", name)
    res = subprocess.run(["nsenter", "--mount=/proc/%d/ns/mnt" % edge._pid("libvirtd-" + ap),
                          "--", "cat", path], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def all_containers(edge):
    return {ap: containers(edge, ap) for ap in edge.net.aps}


def client_get(edge, ap, port, path="/"):
    ap_addr, _ = edge.net.client_addresses(ap)
    res = subprocess.run(
        ["ip", "netns", "exec", edge.net.client_netns(ap), sys.executable, "-c",
         "import json,sys,urllib.request as u\n"
         "r=u.urlopen(sys.argv[1],timeout=10)\n"
         "print(json.dumps({'status':r.status,'body':r.read().decode()}))",
         "http://%s:%d%s" % (ap_addr, port, path)],
        capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def assert_no_failed_requests(summary):
    """Zero failed requests, the claim of every test that moves a service
    under a client.

    Session 7 let timeouts around a move pass as xfail on an overloaded
    machine.  Around every proxy switch the isolation rules were deleted and
    re-created, which lost packets: about 1 % of the connections waited for
    TCP's 1 s SYN retransmission, and a near-saturated instance's queue
    grew behind them; fixed in agents/node/isolation.py, so the xfail is
    gone and any failure fails.  The AP's HAProxy log (the edge's
    ``logs/haproxy-AP.log``) has each request's timers and termination
    state.
    """
    assert summary["failed"] == 0, "%s (load average %.1f)" % (
        summary, os.getloadavg()[0])


@contextlib.contextmanager
def private_edge(prefix, port, topology, **opts):
    """A module's own embedded edge (bench/common.BenchEdge: the slot's
    prefix, port and addresses), for a topology or setting the shared edge
    does not have; checked to leave no namespace behind."""
    from bench import common
    with common.BenchEdge(prefix, port, topology=topology, **opts) as b:
        yield b
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert b.edge.prefix not in left, "namespaces left behind: " + left


def migrate_journal_under_load(edge, admin, tmp_path, interval, source="ap-1",
                               target="ap-2", users=({},), order=None):
    """The journal app (every request writes its count and a journal line)
    migrated (in ``order``, else the manager's) under ``users`` (each a
    ClientLoad's keyword arguments, e.g. ``keepalive``, ``method``): zero
    failed requests, every request counted once and its line on the target
    exactly once.  Returns (window, summary of all users' requests)."""
    bundle = loadgen.journal_bundle(str(tmp_path / "journal.tar.gz"))
    wait_op(admin, admin.create_service("web", "journal", node=source, bundle=bundle))
    port = admin.service("journal")["port"]
    loads = []
    try:
        for kwargs in users:
            loads.append(Load(edge, source, port, interval=interval, **kwargs))
        time.sleep(0.5)
        (window,) = wait_op(admin, admin.migrate("journal", target, order))["windows"]
        time.sleep(0.3)
    finally:
        results = [r for load in loads for r in load.stop()]
    summary = loadgen.summarize(results)
    assert_no_failed_requests(summary)
    hits = sorted(r["hits"] for r in results)
    assert hits == list(range(1, len(results) + 1)), hits
    (inst,) = [i for i in admin.service("journal")["instances"] if i["state"] == "ACTIVE"]
    assert inst["node"] == target
    journal = state_file(edge, target, inst["id"], "journal").splitlines()
    assert [int(line.split()[0]) for line in journal] == hits
    wait_op(admin, admin.delete_service("journal"))
    return window, summary

