"""Where a libvirt LXC domain's cgroups are (agents/node/containers.py): the
freezer, pids and usage code must find them in both of libvirt's layouts, its
own (no systemd-machined: the embedded edge) and systemd-machined's (Debian's
libvirt-daemon-system on a systemd host: the flashed image)."""
import os

from mec_conpaas.agents.node import containers

DOMAIN = "mec-0b5f2d0c-5d7e-4a77-8f2e-7d3c1f4a9e01"


def _escaped(name):
    """systemd's unit-name escaping of a machine name (``-`` -> ``\\x2d``)."""
    return name.replace("-", "\\x2d")


def test_both_layouts_and_no_other_domain(tmp_path):
    root = tmp_path
    own = root / "freezer" / "machine" / ("lxc-4242-%s.libvirt-lxc" % DOMAIN)
    scope = root / "freezer" / "machine.slice" / (
        "machine-%s.scope" % _escaped("lxc-4243-" + DOMAIN))
    others = [root / "freezer" / "machine" / ("lxc-1-x%s.libvirt-lxc" % DOMAIN),
              root / "freezer" / "machine.slice" / (
                  "machine-%s.scope" % _escaped("lxc-2-x" + DOMAIN)),
              root / "freezer" / "machine.slice" / "machine-qemu\\x2d1\\x2dvm.scope"]
    for d in [own, scope] + others:
        d.mkdir(parents=True)
    found = containers._domain_cgroups("freezer", DOMAIN, root=str(root))
    assert found == [str(own), str(scope)]
    assert containers._domain_cgroups("pids", DOMAIN, root=str(root)) == []


def test_usage_read_where_the_process_is():
    """``/proc/PID/cgroup`` names the cgroup, whatever the layout: this
    process's own memory usage, as the node agent reads an instance's."""
    value = containers._cgroup_read(os.getpid(), "memory", "memory.usage_in_bytes")
    assert value is not None and value > 0
