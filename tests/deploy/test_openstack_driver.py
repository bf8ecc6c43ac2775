"""The PaaS provisioning through OpenStack on the deployed test bed ([manager] driver
openstack, the APs' node agents on backend nova): every step through the mec-conpaas
CLI on the master, what is left behind checked with openstacksdk."""
import json
import os
import time

import pytest

from tests.deploy.conftest import ADMIN_HEADER
from tests.deploy.conftest import PAAS_CLI
from tests.deploy.conftest import full_only
from tests.deploy.conftest import shell_quote
from tests.deploy.test_deploy import http_status

CHECK = os.path.join(os.path.dirname(__file__), "openstack_driver_check.py")
CLIENT = os.path.join(os.path.dirname(__file__), "interval_client.py")
PYTHON = "/opt/mec-conpaas/venv/bin/python"


@pytest.fixture(scope="module", autouse=True)
def openstack_driver(master):
    """These tests need the deployment on the openstack driver: the default with a
    controller (MEC_DEPLOY_OPENSTACK=0 puts the test bed on the lxc driver)."""
    conf = master.run("cat /etc/mec-conpaas/mec-conpaas.conf").stdout
    if "driver = openstack" not in conf:
        pytest.skip("the manager runs the lxc driver "
                    "(MEC_DEPLOY_OPENSTACK=0 was set)")


@pytest.fixture(scope="module")
def check(master):
    """openstack_driver_check.py on the master, run with the manager's venv."""
    master.put(CHECK, "/var/tmp/mec-openstack-check.py")
    master.put(CLIENT, "/var/tmp/mec-interval-client.py")

    def run(*args, env=""):
        out = master.run("%s %s /var/tmp/mec-openstack-check.py %s" % (
            env, PYTHON, " ".join(args)), timeout=600).stdout
        return json.loads(out.strip().splitlines()[-1])
    return run


def service(master, name):
    return json.loads(master.run(PAAS_CLI + "service show %s -f json" % name).stdout)


def instances(master, name):
    """The service's instances as the API has them (``service show`` prints them as one
    string of address@node(state, role, tier))."""
    out = master.run("curl -sf -H \"%s\" http://127.0.0.1:9680/v1/services/%s"
                     % (ADMIN_HEADER, name)).stdout
    return json.loads(out)["service"]["instances"]


@full_only
def test_manager_runs_the_openstack_driver(master, aps):
    conf = master.run("cat /etc/mec-conpaas/mec-conpaas.conf").stdout
    assert "driver = openstack" in conf, conf
    for ap in aps:
        agent = ap.run("cat /etc/mec-conpaas/mec-conpaas.conf").stdout
        assert "container_backend = nova" in agent, (ap.name, agent)


@full_only
def test_web_service_pinned_to_ap1_scales_migrates_and_leaves_nothing(master, aps, check):
    """Create on ap-1 (a nova server in its zone), reach it through both APs' endpoints,
    scale to 2 across both APs, migrate with a client every 10 ms (no failed request),
    delete: no server and no port named after its instances is left."""
    first, last = aps[0], aps[-1]
    name = "os-web"
    seen = set()
    master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)
    try:
        t0 = time.monotonic()
        master.run(PAAS_CLI + "service create web %s --node %s -f json" % (name, first.name),
                   timeout=600)
        print("\nservice create through nova: %.1f s" % (time.monotonic() - t0))
        svc = service(master, name)
        assert svc["state"] == "RUNNING" and svc["home_node"] == first.name, svc
        servers = master.openstack("server list --long -f json")
        ours = [s for s in servers if s["Name"].startswith("mec-")]
        assert len(ours) == 1 and ours[0]["Availability Zone"] == first.name, ours
        seen |= {s["Name"][len("mec-"):] for s in ours}
        for ap in aps:
            assert http_status(master, ap.address, svc["port"]) == "200", ap.name

        master.run(PAAS_CLI + "service scale %s --count 2 --node %s -f json"
                   % (name, last.name), timeout=600)
        svc = service(master, name)
        zones = sorted(s["Availability Zone"] for s in master.openstack(
            "server list --long -f json") if s["Name"].startswith("mec-"))
        assert zones == sorted([first.name, last.name]), zones
        seen |= {s["Name"][len("mec-"):] for s in master.openstack("server list -f json")
                 if s["Name"].startswith("mec-")}

        master.run("rm -f /tmp/mec-client.stop")
        master.run("nohup %s /var/tmp/mec-interval-client.py http://%s:%d/ "
                   "/tmp/mec-client.stop > /tmp/mec-client.json 2>&1 &"
                   % (PYTHON, first.address, svc["port"]))
        time.sleep(2)
        t0 = time.monotonic()
        master.run(PAAS_CLI + "service migrate %s --to %s -f json" % (name, last.name),
                   timeout=600)
        print("migrate through nova: %.1f s" % (time.monotonic() - t0))
        time.sleep(1)
        master.run("touch /tmp/mec-client.stop")
        time.sleep(1.5)
        client = json.loads(master.run("cat /tmp/mec-client.json").stdout)
        print("client every 10 ms: %s" % client)
        assert client["ok"] > 100 and client["failed"] == 0, client
        svc = service(master, name)
        assert svc["home_node"] == last.name, svc
        seen |= {s["Name"][len("mec-"):] for s in master.openstack("server list -f json")
                 if s["Name"].startswith("mec-")}
    finally:
        master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)
    left = check("leftovers", *sorted(seen))
    assert left["servers"] == [] and left["ports"] == [], left


@full_only
def test_quota_zero_is_a_clear_error_and_leaves_nothing(master, check):
    project = master.run("OS_CLOUD=mec-admin openstack token issue -f value -c project_id"
                         ).stdout.strip()
    before = master.openstack("quota show %s -f json" % project)
    instances = next(q["Limit"] for q in before if q["Resource"] == "instances") \
        if isinstance(before, list) else before["instances"]
    name = "os-quota"
    master.run("OS_CLOUD=mec-admin openstack quota set --instances 0 %s" % project)
    try:
        out = master.run(PAAS_CLI + "service create web %s --node ap-1 -f json" % name,
                         check=False, timeout=600)
        assert out.returncode != 0, out.stdout
        assert "quota" in out.stderr + out.stdout, out.stderr
        assert "ask the cloud admin" in out.stderr + out.stdout, out.stderr
    finally:
        master.run("OS_CLOUD=mec-admin openstack quota set --instances %s %s"
                   % (instances, project))
        master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)
    servers = [s["Name"] for s in master.openstack("server list -f json")]
    assert not [s for s in servers if s.startswith("mec-")], servers
    ports = [p["Name"] for p in master.openstack("port list -f json")]
    assert not [p for p in ports if p.startswith("mec-")], ports


@full_only
def test_instance_larger_than_the_ap_is_no_valid_host_and_leaves_nothing(master, check):
    """40 GB: below the project's RAM quota, above what placement has on any AP."""
    out = check("create", "ap-2", env="MEC_MEMORY_MB=40000")
    assert out["error"]["type"] == "InsufficientCapacity", out
    assert "no room" in out["error"]["message"] and "ap-2" in out["error"]["message"], out
    left = check("leftovers", out["id"])
    assert left["servers"] == [] and left["ports"] == [], left


@full_only
def test_inventory_comes_from_nova_and_placement(aps, check):
    inv = check("inventory")["inventory"]
    for ap in aps:
        assert inv[ap.name]["up"] is True, inv
        assert inv[ap.name]["memory_mb_free"] > 0, inv


def paas_node(master, name):
    return json.loads(master.run(PAAS_CLI + "node show %s -f json" % name).stdout)


def inventory_ttl(master):
    """The manager's [openstack] inventory_ttl, as its own config parser reads it."""
    return int(master.run(
        "%s -c 'from mec_conpaas import conf; conf.parse_args([], default_config_files="
        "[\"/etc/mec-conpaas/mec-conpaas.conf\"]); print(conf.CONF.openstack.inventory_ttl)'"
        % PYTHON).stdout.strip())


@full_only
def test_node_views_and_placement_follow_nova(master, aps):
    """node show carries each AP's compute host as nova and placement see it (its
    memory as `openstack hypervisor show` has it, its reserve check passed); a compute
    service an admin disables in nova makes that AP refuse new instances with a clear
    error, and enabling it back makes it a host again."""
    ttl = inventory_ttl(master)
    for ap in aps:
        cloud = paas_node(master, ap.name)["cloud"]
        hyp = master.openstack("hypervisor show %s -f json" % ap.name)
        assert cloud["up"] is True and cloud["memory_mb"] == hyp["memory_mb"], (cloud, hyp)
        assert 0 < cloud["memory_mb_free"] <= cloud["memory_mb"], cloud
        # The role's reserved_host_cpus/_memory_mb cover the node's own reserve: the
        # manager has nothing to take off (manager/inventory.py, the reserve check).
        reserve = cloud["reserve"]
        assert reserve["placement"]["vcpus"] >= reserve["node"]["vcpus"] >= 1, reserve
        assert reserve["subtracted"] == {} and reserve["message"] is None, reserve
    ap = aps[-1]
    master.openstack("compute service set --disable --disable-reason mec-test %s "
                     "nova-compute" % ap.name)
    try:
        time.sleep(ttl + 1)
        assert paas_node(master, ap.name)["cloud"]["up"] is False
        out = master.run(PAAS_CLI + "service create web os-inv --node %s -f json"
                         % ap.name, check=False, timeout=300)
        assert out.returncode != 0, out.stdout
        assert "disabled in the cloud (nova)" in out.stderr + out.stdout, out.stderr
    finally:
        master.openstack("compute service set --enable %s nova-compute" % ap.name)
        master.run(PAAS_CLI + "service delete os-inv", check=False, timeout=300)
    time.sleep(ttl + 1)
    assert paas_node(master, ap.name)["cloud"]["up"] is True


def hostile_bundle(path):
    """Links chained through each other: a -> ., b -> a/.., then a file through b."""
    import io
    import tarfile
    with tarfile.open(path, "w:gz") as tar:
        for name, target in (("a", "."), ("b", "a/..")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        data = b"escaped\n"
        info = tarfile.TarInfo("b/escaped")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def whoami_bundle(path):
    import io
    import tarfile
    run = b"#!/bin/sh\nexec sleep 6001\n"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("run.sh")
        info.size, info.mode = len(run), 0o755
        tar.addfile(info, io.BytesIO(run))
    return path


@full_only
def test_root_in_a_nova_instance_is_not_root_on_the_ap(master, aps, tmp_path):
    """nova's [libvirt] uid_maps are in effect: the app (root inside) runs as the
    mapped, unprivileged uid on the AP, and its files there belong to that uid; the
    instance has a pids limit."""
    ap, name = aps[0], "os-whoami"
    master.put(whoami_bundle(str(tmp_path / "whoami.tgz")), "/var/tmp/os-whoami.tgz")
    master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)
    try:
        master.run(PAAS_CLI + "service create generic %s --node %s --bundle "
                   "/var/tmp/os-whoami.tgz -f json" % (name, ap.name), timeout=600)
        deadline = time.monotonic() + 30
        while True:
            ps = ap.run("ps -eo pid=,uid=,args= | grep '[s]leep 6001'", check=False).stdout
            if ps.strip() or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert ps.strip(), "the app never started"
        pid, uid = (int(x) for x in ps.split()[:2])
        inside, outside, count = (int(x) for x in ap.run(
            "cat /proc/%d/uid_map" % pid).stdout.split())
        assert inside == 0 and outside == uid and uid != 0 and count < 2 ** 32 - 1, \
            (uid, inside, outside, count)
        owner = ap.run("stat -c '%%u %%g' /proc/%d/root/srv/app/run.sh" % pid).stdout
        assert [int(x) for x in owner.split()] == [uid, uid], owner
        assert ap.run("stat -c %%u /proc/%d/root/etc/mec-conpaas/instance.json"
                      % pid).stdout.strip() == str(uid)
        # nova sets no pids limit; the node agent puts the domain under [node_agent]
        # pids_limit (default 512), as the lxc backend's instances.
        cgroup = ap.run("sed -n 's/^[0-9]*:pids://p' /proc/%d/cgroup" % pid).stdout.strip()
        assert cgroup.endswith(".libvirt-lxc"), cgroup
        assert ap.run("cat /sys/fs/cgroup/pids%s/pids.max" % cgroup).stdout.strip() == "512"
    finally:
        master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)


@full_only
def test_a_bundle_whose_links_escape_is_refused_and_leaves_nothing(master, tmp_path):
    master.put(hostile_bundle(str(tmp_path / "hostile.tgz")), "/var/tmp/os-hostile.tgz")
    out = master.run(PAAS_CLI + "service create generic os-hostile --node ap-1 --bundle "
                     "/var/tmp/os-hostile.tgz -f json", check=False, timeout=300)
    assert out.returncode != 0, out.stdout
    assert "link" in out.stderr + out.stdout, out.stderr
    master.run(PAAS_CLI + "service delete os-hostile", check=False, timeout=300)
    servers = [s["Name"] for s in master.openstack("server list -f json")]
    assert not [s for s in servers if s.startswith("mec-")], servers


PROBE = ("import concurrent.futures, json, socket, sys\n"
         "def probe(t):\n"
         "    try:\n"
         "        socket.create_connection(tuple(t), timeout=1).close()\n"
         "        return True\n"
         "    except OSError:\n"
         "        return False\n"
         "ts = json.loads(sys.argv[1])\n"
         "with concurrent.futures.ThreadPoolExecutor(len(ts)) as ex:\n"
         "    print(json.dumps(list(ex.map(probe, ts))))\n")


def probe_from_instance(ap, address, targets):
    """Which of ``[(addr, port)]`` the nova instance holding ``address`` on ``ap``
    reaches: the AP's python, run in the instance's network namespace (found by
    the address on its NIC)."""
    ap.run("cat > /var/tmp/mec-probe.py <<'EOF_'\n%sEOF_" % PROBE)
    pid = ap.run(
        "for p in $(ps -eo pid=,uid= | awk '$2 != 0 {print $1}'); do "
        "nsenter -t $p -n ip -o -4 addr 2>/dev/null | grep -q ' %s/' && "
        "{ echo $p; break; }; done" % address).stdout.split()
    assert pid, "no task of the instance %s on %s" % (address, ap.name)
    out = ap.run("nsenter -t %s -n python3 /var/tmp/mec-probe.py %s" % (
        pid[0], shell_quote(json.dumps(targets))), timeout=120).stdout
    return dict(zip((tuple(t) for t in targets), json.loads(out)))


@full_only
def test_nova_instances_are_isolated_on_the_network(master, aps):
    """Mirrors tests/functional/test_isolation.py for nova's instances: an instance
    reaches its own service's peer (other AP) and the AP endpoints, and not another
    service's instance, any node agent, the manager or the OpenStack APIs."""
    first, last = aps[0], aps[-1]
    names = ("os-iso-a", "os-iso-b")
    try:
        for name in names:
            master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)
            master.run(PAAS_CLI + "service create web %s --node %s -f json"
                       % (name, first.name), timeout=600)
        master.run(PAAS_CLI + "service scale os-iso-a --count 2 --node %s -f json"
                   % last.name, timeout=600)
        a, b = service(master, "os-iso-a"), service(master, "os-iso-b")
        a_inst, b_inst = instances(master, "os-iso-a"), instances(master, "os-iso-b")
        a_here = next(i["address"] for i in a_inst if i["node"] == first.name)
        a_there = next(i["address"] for i in a_inst if i["node"] == last.name)
        b_here = b_inst[0]["address"]
        conf = master.run("cat /etc/mec-conpaas/mec-conpaas.conf").stdout
        assert "instance_denied_ports" in first.run(
            "cat /etc/mec-conpaas/mec-conpaas.conf").stdout
        denied = [int(p) for p in first.run(
            "sed -n 's/^instance_denied_ports = //p' /etc/mec-conpaas/mec-conpaas.conf"
        ).stdout.strip().split(",")]
        assert 9680 in denied and 5000 in denied, (denied, conf)
        got = probe_from_instance(first, a_here, [
            (a_there, 8080), (first.address, a["port"]), (last.address, a["port"]),
            (b_here, 8080), (b_here, 8999), (first.address, 9681), (last.address, 9681),
            (master.address, 9680), (master.address, 5000), (master.address, 8774)])
        print("\nfrom %s's instance on %s: %s" % ("os-iso-a", first.name, got))
        assert got.pop((a_there, 8080)) is True                # own peer, other AP
        assert got.pop((first.address, a["port"])) is True     # AP endpoints
        assert got.pop((last.address, a["port"])) is True
        assert set(got.values()) == {False}, got
        # The nodes still reach every instance: both endpoints answer.
        for ap in aps:
            assert http_status(master, ap.address, b["port"]) == "200", ap.name
    finally:
        for name in names:
            master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)


@full_only
def test_base_image_deleted_from_glance_is_uploaded_again(master, check):
    """The manager's driver keeps the id of the glance image it uploaded; deleted behind
    its back, nova refuses the next create ("Can not find requested image"): the driver
    uploads the image again and the create succeeds, leaving one server and port, its
    own, which the delete then removes."""
    images = [i for i in master.openstack("image list -f json")
              if i["Name"].startswith("mec-conpaas-base-")]
    assert images, "no base image in glance: an earlier create should have uploaded it"
    for image in images:
        master.openstack("image delete %s" % image["ID"])
    name, ids = "os-noimage", []
    try:
        t0 = time.monotonic()
        master.run(PAAS_CLI + "service create web %s --node ap-1 -f json" % name,
                   timeout=900)
        print("\ncreate with the image built and uploaded again: %.1f s"
              % (time.monotonic() - t0))
        assert service(master, name)["state"] == "RUNNING"
        again = [i for i in master.openstack("image list -f json")
                 if i["Name"].startswith("mec-conpaas-base-")]
        assert [i["Name"] for i in again] == [images[0]["Name"]], again
        assert again[0]["ID"] not in {i["ID"] for i in images}, again
        ids = [i["id"] for i in instances(master, name)]
        servers = [s["Name"] for s in master.openstack("server list -f json")
                   if s["Name"].startswith("mec-")]
        assert servers == ["mec-" + i for i in ids], (servers, ids)
    finally:
        master.run(PAAS_CLI + "service delete %s" % name, check=False, timeout=300)
    left = check("leftovers", *ids)
    assert left["servers"] == [] and left["ports"] == [], left
