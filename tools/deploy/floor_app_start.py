"""Run on an AP by tools/deploy/bench_openstack.py, with the node agent's Python: the
floor's "app start" in a plain nova server (``openstack server create --wait``), with no
PaaS manager, node agent, HAProxy or placement involved. It does the least anything must
do to start the web service's app in a nova LXC instance, the way
docs/openstack-driver.rst measured works: the port's address set from the host side, the
sample web bundle unpacked into the instance's root and the image's init handed its
``instance.json``; the image then starts the same service agent and app as a PaaS
instance. Prints one JSON line (seconds taken).

    floor_app_start.py SERVER_UUID ADDRESS PREFIXLEN BUNDLE

BUNDLE: the PaaS's sample web bundle (manager.service.build_sample_bundle, the app a
``service create web`` without a bundle runs), made by the bench on the test host.
"""
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import libvirt

from mec_conpaas import bundles
from mec_conpaas.agents.node import containers
from mec_conpaas.agents.node import nova
from mec_conpaas.drivers import nova_image


def main(server_id, address, prefixlen, bundle):
    t0 = time.monotonic()
    dom = libvirt.open("lxc:///").lookupByUUIDString(server_id)
    desc = ET.fromstring(dom.XMLDesc(0))
    uid = desc.find("idmap/uid[@start='0']")
    gid = desc.find("idmap/gid[@start='0']")
    ids = (int(uid.get("target")) if uid is not None else 0,
           int(gid.get("target")) if gid is not None else 0)
    pid = None
    while pid is None and time.monotonic() - t0 < 60:
        pid = containers._container_pid(dom.name())
        if pid is None:
            time.sleep(0.05)
    if pid is None:
        sys.exit("domain %s has no running task" % dom.name())
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-o", "link"],
                         capture_output=True, text=True, check=True).stdout
    nic = next(line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
               if ": lo:" not in line)
    for argv in (["addr", "replace", "%s/%s" % (address, prefixlen), "dev", nic],
                 ["link", "set", nic, "up"], ["route", "replace", "default", "dev", nic]):
        subprocess.run(["nsenter", "-t", str(pid), "-n", "ip"] + argv, check=True)
    root = "/proc/%s/root/." % pid
    bundles.extract(bundle, root + "/srv/app", 64 << 20, owner=ids)
    env = containers.instance_env({"service_type": "web", "service_name": "floor",
                                   "id": server_id}, address)
    nova.write_file(root, nova_image.INSTANCE_CONFIG,
                    json.dumps({"env": {k: v for k, v in env.items() if v}}), ids,
                    mode=0o644)
    print(json.dumps({"configured_s": round(time.monotonic() - t0, 3),
                      "app_port": containers.APP_PORT}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
