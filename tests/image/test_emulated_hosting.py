"""The image hosts services (issue 11): in the emulated boot, the node agent runs
the lxc backend (libvirt LXC) with the node's instance network, registers as a
node that can take instances, and the real manager places a PaaS service on it.

The manager reaches the node as a master does over the backbone
(conftest.paas_service, imagelib.Backbone: a tap link between this machine and
the guest, and a route to the node's instance network via the node; qemu's
user networking alone lets the guest reach the manager but not the other way).
A ``web`` service is created with no node named: placement puts it on the
booted node, the node agent starts its instance (a libvirt LXC container on the
baked base image) and the service answers HTTP through the node's endpoint
(HAProxy) from this machine.  The Wi-Fi test fetches the same service through
the access point's client-side address, over the air.

``test_lxc_container_starts_and_serves`` starts a bare container with virsh
(no manager, no node agent): the time from ``virsh create`` to the first HTTP
answer is what LXC itself costs under TCG, beside the manager's create.
"""

import configparser
import ipaddress
import json
import shlex
import time
import urllib.request

import pytest
from imagelib import roles_in

pytestmark = pytest.mark.emulated_boot

DOMAIN = "mec-image-test"
PROBE = """
import sys, time, urllib.request
t0 = time.monotonic()
while time.monotonic() - t0 < {timeout}:
    try:
        body = urllib.request.urlopen("http://{addr}:8000/os-release", timeout=10).read()
        print("%.1f" % (time.monotonic() - t0)); print(body.decode()); sys.exit(0)
    except OSError:
        time.sleep(1)
sys.exit("no answer from the container after {timeout} s")
"""


@pytest.fixture(scope="module")
def agent_conf(image, booted):
    if "mec_conpaas_node" not in roles_in(image):
        pytest.skip("profile without mec_conpaas_node")
    g, ssh = booted
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(ssh.run("sudo cat /etc/mec-conpaas/mec-conpaas.conf").stdout)
    opts = dict(conf["node_agent"])
    # A joined node's instance network is the master's allocation, not the image's.
    alloc = ssh.run("sudo cat /var/lib/mec-conpaas/allocation.json", check=False)
    if alloc.returncode == 0 and conf.get("join", "networks", fallback="") == "allocated":
        opts["instance_network"] = json.loads(alloc.stdout)["instance_network"]
    return opts


def test_node_registers_able_to_host(booted, master, agent_conf):
    g, ssh = booted
    assert agent_conf["container_backend"] == "libvirt"
    node = master.wait_node_up("ap-test-1")
    assert node and node["state"] == "up", master.log()[-2000:]
    assert node["container_backend"] == "libvirt", node
    assert node["max_instances"] == int(agent_conf["max_instances"]) > 0, node
    # What the lxc backend runs on: libvirtd, the instance bridge, the base image.
    # Debian's libvirtd is socket-activated and exits after 120 s without a client
    # or a running domain (LIBVIRTD_ARGS="--timeout 120"): the socket must listen
    # and a connection must be answered, the daemon need not be running now.
    virsh = ssh.run("sudo virsh -c lxc:/// list --all", check=False)
    assert virsh.returncode == 0, (virsh.stdout, virsh.stderr)
    for unit in ("libvirtd.socket", "mec-conpaas-network", "mec-conpaas-node-agent"):
        assert ssh.run(f"systemctl is-active {unit}", check=False).stdout.strip() == "active", \
            ssh.run(f"sudo journalctl -b -u {unit} --no-pager | tail -n 30", check=False).stdout
    net = ipaddress.ip_network(agent_conf["instance_network"])
    addr = ssh.run(f"ip -4 -o addr show dev {agent_conf['bridge']}").stdout
    assert f"inet {net.network_address + 1}/{net.prefixlen}" in addr, addr
    base = agent_conf["base_image_path"]
    assert ssh.run(f"sudo test -f {base}/.mec-conpaas-image", check=False).returncode == 0
    # Baked into the image: the first-boot debootstrap unit had nothing to do.
    props = ssh.run("systemctl show -p ConditionResult -p ExecMainStartTimestamp "
                    "mec-conpaas-base-image").stdout
    assert "ConditionResult=no" in props, props


def test_manager_places_a_service_on_the_node(booted, master, paas_service):
    """Placement chose the booted node; its instance is ACTIVE on the node's
    instance network and the service answers through the node's endpoint."""
    g, ssh = booted
    svc, node, created_s = paas_service
    assert svc["state"] == "RUNNING" and svc["home_node"] == "ap-test-1", svc
    [inst] = svc["instances"]
    assert inst["node"] == "ap-test-1" and inst["state"] == "ACTIVE", svc
    net = ipaddress.ip_network(node["allocation"]["instance_network"])
    assert ipaddress.ip_address(inst["address"]) in net, (inst, net)
    # The container the node agent started, on the node.
    domains = ssh.run("sudo virsh -c lxc:/// list --name").stdout.split()
    assert any(inst["id"] in d for d in domains), (domains, inst)
    # Through the node's endpoint (its HAProxy, the service's port), from this
    # machine over the backbone: the webcounter app names the instance it ran on.
    url = f"http://{g.backbone.GUEST}:{svc['port']}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            # No proxy from the environment: this request stays on the link.
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    url, timeout=30) as r:
                answer = json.load(r)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    assert answer["instance"] == inst["address"] and answer["hits"] >= 1, answer
    assert answer["service"] == svc["name"], answer
    g.timings["service_answered_after_poweron_s"] = round(time.monotonic() - g.t0, 1)
    print(f"manager-placed service on the emulated node: created in {created_s:.0f} s, "
          f"answered through {url}")


def test_lxc_container_starts_and_serves(booted, agent_conf):
    g, ssh = booted
    net = ipaddress.ip_network(agent_conf["instance_network"])
    addr = net.network_address + 250  # outside what the node agent hands out first
    xml = f"""<domain type='lxc'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type>exe</type><init>/usr/bin/python3</init>
    <initarg>-m</initarg><initarg>http.server</initarg><initarg>8000</initarg>
    <initarg>--directory</initarg><initarg>/usr/lib</initarg></os>
  <devices>
    <filesystem type='mount'><source dir='{agent_conf["base_image_path"]}'/>
      <target dir='/'/><readonly/></filesystem>
    <interface type='bridge'><source bridge='{agent_conf["bridge"]}'/>
      <ip address='{addr}' family='ipv4' prefix='{net.prefixlen}'/></interface>
    <console type='pty'/>
  </devices>
</domain>
"""
    ssh.run("cat > /tmp/mec-image-test.xml << 'EOF'\n" + xml + "EOF")
    t0 = time.monotonic()
    try:
        ssh.run("sudo virsh -c lxc:/// create /tmp/mec-image-test.xml", timeout=300)
        started = time.monotonic() - t0
        res = ssh.run("python3 -c " + shlex.quote(PROBE.format(addr=addr, timeout=300)),
                      check=False, timeout=420)
        log = ssh.run(f"sudo tail -n 40 /var/log/libvirt/lxc/{DOMAIN}.log", check=False).stdout
        assert res.returncode == 0, (res.stdout, res.stderr, log)
        answered = time.monotonic() - t0
        # Power-on (qemu start) to an instance answering, the tests before included.
        g.timings["first_instance_answered_after_poweron_s"] = round(
            time.monotonic() - g.t0, 1)
        assert "Debian GNU/Linux" in res.stdout
    finally:
        ssh.run(f"sudo virsh -c lxc:/// destroy {DOMAIN}", check=False)
    g.timings.update({"lxc_create_s": round(started, 1), "lxc_http_s": round(answered, 1)})
    print(f"libvirt LXC container under TCG: created in {started:.1f} s, "
          f"answered HTTP {answered:.1f} s after virsh create")
