"""Containers are unprivileged and contained.

Root inside an instance is an unprivileged uid of its own on the node, and
an instance that fork-bombs, fills its memory or fills its disk hurts only
itself: the well-behaved web service on the same access point keeps
answering through the AP endpoint, the node keeps heartbeating, and
deleting the hostile service cleans everything up.
"""
import datetime
import glob
import io
import json
import os
import subprocess
import tarfile
import time

import pytest

from mec_conpaas.agents.node import containers as containers_mod
from tests.functional.conftest import client_get
from tests.functional.conftest import containers
from tests.functional.conftest import wait_op

AP = "ap-1"
TRIGGER = "/var/lib/service/go"
# The attack starts only when the test says so: the create operation
# first sees a healthy instance, as any service that turns hostile later.
WAIT_FOR_TRIGGER = "while [ ! -e %s ]; do sleep 0.1; done\n" % TRIGGER


def bundle(path, run_sh):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("run.sh")
        info.size = len(run_sh)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(run_sh))
    return path


def on_ap(edge, argv):
    """Run on the access point, in its mount namespace (where the
    instances' disk images and overlays are mounted)."""
    pid = edge._pid("libvirtd-" + AP)
    return subprocess.run(["nsenter", "--mount=/proc/%d/ns/mnt" % pid, "--"] + argv,
                          capture_output=True, text=True, timeout=30)


def instance_dir(edge, iid):
    return edge.path("nodes", AP, "instances", iid)


def cgroup(controller, iid, name):
    # libvirt's under the access point's partition (edge/partition.py); the
    # node agent's pids cgroup under /machine
    paths = [p for pattern in ("machine/*.partition", "machine") for p in glob.glob(
        "/sys/fs/cgroup/%s/**/%s/*-mec-%s.libvirt-lxc/%s" % (controller, pattern, iid,
                                                              name), recursive=True)]
    if not paths:
        return None
    with open(paths[0]) as f:
        return f.read()


def create(admin, tmp_path, name, run_sh):
    wait_op(admin, admin.create_service(
        "generic", name, node=AP, bundle=bundle(str(tmp_path / (name + ".tgz")), run_sh)))
    return admin.service(name)["instances"][0]["id"]


@pytest.fixture(scope="module")
def good(edge, admin):
    """A well-behaved web service on the attacked access point."""
    wait_op(admin, admin.create_service("web", "good", node=AP))
    yield admin.service("good")["port"]
    wait_op(admin, admin.delete_service("good"))


def assert_ap_serves(edge, admin, port):
    assert client_get(edge, AP, port)["status"] == 200
    node = admin.node(AP)
    assert node["state"] == "up", node
    age = datetime.datetime.now(datetime.timezone.utc) - \
        datetime.datetime.fromisoformat(node["last_heartbeat"])
    assert age.total_seconds() < edge.manager_opts["node_heartbeat_timeout"], node


def attack(edge, admin, port, iid, reached, timeout=20, after=3):
    """Trigger the attack; while it runs, the AP must keep serving.  Returns
    once ``reached()`` shows the attack hit its limit, plus ``after`` s."""
    res = on_ap(edge, ["touch", os.path.join(instance_dir(edge, iid), "fs", "state",
                                             os.path.basename(TRIGGER))])
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + timeout
    hit_at = None
    while hit_at is None or time.monotonic() < hit_at + after:
        assert_ap_serves(edge, admin, port)
        if hit_at is None and reached():
            hit_at = time.monotonic()
        assert hit_at is not None or time.monotonic() < deadline, \
            "the attack never reached its limit"
        time.sleep(0.3)


def delete_and_check(edge, admin, name, iid):
    wait_op(admin, admin.delete_service(name))
    assert iid not in containers(edge, AP)
    assert not os.path.exists(instance_dir(edge, iid))
    assert cgroup("pids", iid, "") is None
    loops = subprocess.run(["losetup", "--list", "--noheadings", "-O", "BACK-FILE"],
                           capture_output=True, text=True, check=True).stdout
    assert iid not in loops


def test_root_inside_is_not_root_on_the_node(edge, admin, tmp_path):
    run = (b"#!/bin/sh\n"
           b"id -u > /var/lib/service/id\n"
           b"cat /proc/self/uid_map > /var/lib/service/uid_map\n"
           b"grep CapEff /proc/self/status > /var/lib/service/caps\n"
           b"echo written > /srv/app/by-the-app\n"
           b"exec sleep 600\n")
    iid = create(admin, tmp_path, "whoami", run)
    state = os.path.join(instance_dir(edge, iid), "fs", "state")
    deadline = time.monotonic() + 10
    while on_ap(edge, ["test", "-s", os.path.join(state, "caps")]).returncode:
        assert time.monotonic() < deadline, "run.sh never wrote its report"
        time.sleep(0.1)
    inside = {name: on_ap(edge, ["cat", os.path.join(state, name)]).stdout
              for name in ("id", "uid_map", "caps")}
    assert inside["id"].strip() == "0"  # root inside...
    first, target, count = (int(x) for x in inside["uid_map"].split())
    assert (first, target, count) != (0, 0, 4294967295)
    assert first == 0 and target != 0
    # ...and the files root makes belong, on the node, to its mapped uid.
    owner = on_ap(edge, ["stat", "-c", "%u %g", os.path.join(state, "id")]).stdout.split()
    assert [int(x) for x in owner] == [target, target]
    app_file = os.path.join(instance_dir(edge, iid), "fs", "upper", "srv", "app",
                            "by-the-app")
    assert on_ap(edge, ["cat", app_file]).stdout == "written\n"
    # Capabilities: exactly the kept set, e.g. no sys_admin or net_admin.
    decoded = subprocess.run(["capsh", "--decode=" + inside["caps"].split()[1]],
                             capture_output=True, text=True, check=True).stdout
    kept = {c.strip().removeprefix("cap_") for c in decoded.split("=", 1)[1].split(",")}
    assert kept == set(containers_mod.CAPABILITIES)
    # Another instance gets another range: no shared uid across services.
    other = create(admin, tmp_path, "whoami2", run)
    assert admin.service("whoami2")["instances"][0]["node"] == AP
    deadline = time.monotonic() + 10
    other_map = os.path.join(instance_dir(edge, other), "fs", "state", "uid_map")
    while on_ap(edge, ["test", "-s", other_map]).returncode:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    other_target = int(on_ap(edge, ["cat", other_map]).stdout.split()[1])
    assert abs(other_target - target) >= count
    wait_op(admin, admin.delete_service("whoami2"))
    delete_and_check(edge, admin, "whoami", iid)


def test_fork_bomb_is_contained(edge, admin, good, tmp_path):
    run = b"#!/bin/sh\n" + WAIT_FOR_TRIGGER.encode() + b"b() { b | b & }\nb\nsleep 600\n"
    iid = create(admin, tmp_path, "forkbomb", run)

    def at_limit():
        events = cgroup("pids", iid, "pids.events") or "max 0"
        return int(events.split()[1]) > 0
    attack(edge, admin, good, iid, at_limit)
    assert int(cgroup("pids", iid, "pids.current")) <= \
        int(cgroup("pids", iid, "pids.max"))
    delete_and_check(edge, admin, "forkbomb", iid)


def test_memory_hog_is_contained(edge, admin, good, tmp_path):
    run = (b"#!/bin/sh\n" + WAIT_FOR_TRIGGER.encode() +
           b"exec python3 -c 'a = []\nwhile True: a.append(bytearray(8 << 20))'\n")
    iid = create(admin, tmp_path, "memhog", run)

    def oom_killed():
        control = dict(line.split() for line in
                       (cgroup("memory", iid, "memory.oom_control") or "").splitlines())
        return int(control.get("oom_kill", 0)) > 0
    attack(edge, admin, good, iid, oom_killed)
    limit = int(cgroup("memory", iid, "memory.limit_in_bytes"))
    assert int(cgroup("memory", iid, "memory.max_usage_in_bytes")) <= limit
    log = [e["log"] for e in admin.logs("memhog")][0]
    assert "restarting" in log  # the agent survived and restarts its app
    delete_and_check(edge, admin, "memhog", iid)


def test_disk_filler_is_contained(edge, admin, good, tmp_path):
    run = (b"#!/bin/sh\n" + WAIT_FOR_TRIGGER.encode() +
           b"dd if=/dev/zero of=/var/lib/service/fill bs=1M\n"
           b"echo filled > /var/lib/service/done\nsleep 600\n")
    iid = create(admin, tmp_path, "diskhog", run)
    fs = os.path.join(instance_dir(edge, iid), "fs")

    def full():
        return on_ap(edge, ["test", "-e", os.path.join(fs, "state", "done")]
                     ).returncode == 0
    attack(edge, admin, good, iid, full, timeout=25)
    image = json.loads(on_ap(edge, ["python3", "-c",
                                    "import json, os, sys; s = os.stat(sys.argv[1]); "
                                    "print(json.dumps([s.st_size, s.st_blocks * 512]))",
                                    os.path.join(instance_dir(edge, iid), "disk.img")]
                             ).stdout)
    size, allocated = image
    assert allocated <= size  # the node's disk lost no more than the limit
    filled = int(on_ap(edge, ["stat", "-c", "%s", os.path.join(fs, "state", "fill")]
                       ).stdout)
    assert filled > 0.8 * size  # it did fill its own disk
    delete_and_check(edge, admin, "diskhog", iid)
