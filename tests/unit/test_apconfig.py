"""A flashed node writes its allocation into its access point (issue 11):
the roles' own templates rendered as an image has them, two nodes allocated
by the real allocator, the rewritten files checked by hostapd's and
dnsmasq's own parsers and by sh."""
import ipaddress
import os
import re
import shutil
import subprocess

import jinja2
import pytest
import yaml

from mec_conpaas.agents.node import apconfig
from mec_conpaas.db import session as db
from mec_conpaas.manager import allocation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _role_file(role, rel):
    with open(os.path.join(REPO, "roles", role, rel)) as f:
        return f.read()


def _image_files(tmp_path):
    """roles/wifi_ap's and roles/mec_conpaas_node's templates with the
    image's values (image-builder/image-vars.yml over the roles' defaults),
    on a Wi-Fi interface and bridge name no host has."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["regex_replace"] = lambda v, pat, rep: re.sub(
        pat, rep.replace("\\\\", "\\"), v)
    values = yaml.safe_load(_role_file("wifi_ap", "defaults/main.yml"))
    with open(os.path.join(REPO, "image-builder", "image-vars.yml")) as f:
        values.update(yaml.safe_load(f))
    values.update(ansible_managed="test", wifi_ap_interface="mectestwl0",
                  inventory_hostname_short="pi")
    for _ in range(3):  # defaults refer to each other
        values = {k: env.from_string(v).render(values) if isinstance(v, str) else v
                  for k, v in values.items()}
    values.update(mec_conpaas_node_bridge="mectestbr0",
                  mec_conpaas_node_instance_network="10.100.1.0/24",
                  mec_conpaas_node_container_backend="libvirt",
                  mec_conpaas_node_peer_routes=[])
    files = {}
    for kind, role, template in (
            ("hostapd", "wifi_ap", "hostapd.conf.j2"),
            ("dnsmasq", "wifi_ap", "dnsmasq.conf.j2"),
            ("interface", "wifi_ap", "interface.j2"),
            ("network", "mec_conpaas_node", "mec-conpaas-network.j2")):
        path = tmp_path / kind
        path.write_text(env.from_string(_role_file(role, "templates/" + template))
                        .render(values))
        files[kind] = str(path)
    os.chmod(files["hostapd"], 0o600)
    cinder = tmp_path / "cinder"
    cinder.write_text("[DEFAULT]\nstorage_availability_zone = mec-edge\n"
                      "[database]\nconnection = x\n")
    files["cinder"] = str(cinder)
    return files


def _hostapd_accepts(path):
    """hostapd has no dry run: it parses the whole file before it touches a
    driver, so a file it accepts ends at the (missing) radio instead."""
    res = subprocess.run(["hostapd", path], capture_output=True, text=True, timeout=20)
    out = res.stdout + res.stderr
    assert "errors found in configuration file" not in out, out
    assert re.search(r"Failed to initialize driver|Could not|nl80211", out), out


@pytest.mark.skipif(not (shutil.which("hostapd") and shutil.which("dnsmasq")),
                    reason="needs hostapd and dnsmasq (tools/install-deps.sh)")
def test_two_joined_nodes_get_their_own_ap_config(store, tmp_path):
    pools = allocation.Pools(store.enrollment)
    with db.session_scope() as s:
        allocs = [allocation.view(allocation.allocate(
            s, pools, "serial:%08d" % n, "id-%d" % n, "pi-%d" % n)) for n in (1, 2)]
    nodes = []
    for n, alloc in enumerate(allocs):
        d = tmp_path / str(n)
        d.mkdir()
        files = _image_files(d)
        before = {k: open(p).read() for k, p in files.items()}
        changed = apconfig.apply(files, alloc, live=False)
        after = {k: open(p).read() for k, p in files.items()}
        nodes.append((alloc, files, after))
        client = ipaddress.IPv4Network(alloc["client_network"])
        # hostapd: the allocated channel, everything first boot set kept.
        _hostapd_accepts(files["hostapd"])
        assert "channel=%d\n" % alloc["wifi_channel"] in after["hostapd"]
        assert after["hostapd"].count("channel=") == 1
        for line in before["hostapd"].splitlines():
            if not line.startswith(("channel=", "hw_mode=")):
                assert line in after["hostapd"].splitlines()
        assert os.stat(files["hostapd"]).st_mode & 0o777 == 0o600
        # dnsmasq: its own --test, and every address it hands out is in the subnet.
        res = subprocess.run(["dnsmasq", "--test", "--conf-file=" + files["dnsmasq"]],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        rng = re.search(r"^dhcp-range=([^,]+),([^,]+),2h$", after["dnsmasq"], re.M)
        assert rng and all(ipaddress.IPv4Address(a) in client for a in rng.groups())
        gw = str(next(client.hosts()))
        assert "dhcp-option=option:router,%s\n" % gw in after["dnsmasq"]
        assert "dhcp-option=option:dns-server,%s\n" % gw in after["dnsmasq"]
        assert re.search(r"^\s+address %s/%d$" % (gw, client.prefixlen), after["interface"],
                         re.M)
        # The bridge script: still valid sh, with the instance network's first address.
        subprocess.run(["sh", "-n", files["network"]], check=True)
        inst = ipaddress.IPv4Network(alloc["instance_network"])
        assert "ADDRESS=%s/%d\n" % (next(inst.hosts()), inst.prefixlen) in after["network"]
        assert "\nMAC=02:4d:45:43:%02x:%02x\n" % tuple(
            int(o) for o in str(inst.network_address).split(".")[1:3]) in after["network"]
        assert "storage_availability_zone = %s\n[database]" % alloc["availability_zone"] \
            in after["cinder"]
        assert sorted(changed) == sorted(k for k in files if before[k] != after[k])
        # The next boot finds it all written: nothing changes, nothing restarts.
        assert apconfig.apply(files, alloc, live=False) == []
    (a, _, fa), (b, _, fb) = nodes
    assert a["wifi_channel"] != b["wifi_channel"]
    assert not ipaddress.IPv4Network(a["client_network"]).overlaps(
        ipaddress.IPv4Network(b["client_network"]))
    assert fa["dnsmasq"] != fb["dnsmasq"] and fa["network"] != fb["network"]


def test_unknown_file_kind_says_which_are_known(tmp_path):
    with pytest.raises(ValueError, match="apply_allocation_to: unknown file kind "
                       "'hostpad' .*hostapd"):
        apconfig.render({"hostpad": str(tmp_path / "x")}, {"wifi_channel": 1})
