"""The PaaS provisioning through OpenStack on the deployed test bed ([manager] driver
openstack, the APs' node agents on backend nova): every step through the mec-conpaas
CLI on the master, what is left behind checked with openstacksdk."""
import json
import os
import time

import pytest

from tests.deploy.conftest import full_only
from tests.deploy.test_deploy import PAAS_CLI
from tests.deploy.test_deploy import http_status

CHECK = os.path.join(os.path.dirname(__file__), "openstack_driver_check.py")
CLIENT = os.path.join(os.path.dirname(__file__), "interval_client.py")
PYTHON = "/opt/mec-conpaas/venv/bin/python"


@pytest.fixture(scope="module", autouse=True)
def openstack_driver(master):
    """These tests need the deployment on the openstack driver: the roles' default
    where there is an OpenStack controller (CI's test bed), unless overridden with
    -e mec_conpaas_manager_driver=lxc -e mec_conpaas_node_container_backend=libvirt."""
    conf = master.run("cat /etc/mec-conpaas/mec-conpaas.conf").stdout
    if "driver = openstack" not in conf:
        pytest.skip("the manager runs the lxc driver (overridden in the inventory)")


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


def instance_ids(master, name):
    out = master.run(PAAS_CLI + "service show %s -f json" % name, check=False).stdout
    try:
        return list(json.loads(out)["tiers"].get("ap-1", {})) if out else []
    except (ValueError, KeyError):
        return []


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
