"""Run on the master by tests/deploy/test_openstack_driver.py, with the manager's venv:
the ``openstack`` driver against the deployed cloud and the APs' node agents (backend
``nova``), outside the manager. Prints one JSON object.

    openstack_driver_check.py create NODE          instance of the webcounter sample
    openstack_driver_check.py delete NODE ID
    openstack_driver_check.py leftovers ID...      servers and ports named after IDs
    openstack_driver_check.py inventory
"""
import io
import json
import os
import sys
import tarfile
import time
import uuid

from sqlalchemy import select

from mec_conpaas import conf as conf_mod
from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.drivers import base
from mec_conpaas.drivers import nodeagent
from mec_conpaas.drivers import openstack as os_driver

SAMPLE = os.path.join(os.path.dirname(conf_mod.__file__), "..", "samples", "webcounter",
                      "wsgi.py")


def setup():
    conf = conf_mod.parse_args(["--config-file", "/etc/mec-conpaas/mec-conpaas.conf"])
    conf.set_override("cloud", os.environ.get("MEC_OS_CLOUD", "mec-admin"), "openstack")
    return conf, os_driver.OpenstackDriver(conf)


def node_ref(name):
    with db.session_scope() as s:
        node = s.scalar(select(models.Node).where(models.Node.name == name))
        return base.NodeRef(node.name, nodeagent.NodeAgentClient(
            node.address, node.agent_port, node.agent_token), node.hostname)


def bundle(conf):
    """The webcounter sample as a bundle in the manager's store (what an upload makes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(os.path.abspath(SAMPLE), arcname="wsgi.py")
    import hashlib
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    path = os.path.join(conf.state_path, "bundles", sha + ".tar.gz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return sha


def main(argv):
    conf, driver = setup()
    action = argv[0]
    out = {}
    t0 = time.monotonic()
    try:
        if action == "create":
            memory = int(os.environ.get("MEC_MEMORY_MB", "128"))
            spec = base.InstanceSpec(
                id=str(uuid.uuid4()), service_id=str(uuid.uuid4()), service_name="oscheck",
                service_type="web", bundle_sha256=bundle(conf), memory_mb=memory, cpus=0.5,
                role="master", master_ip="10.231.0.10")
            out["id"] = spec.id
            out["info"] = driver.create_instance(node_ref(argv[1]), spec)
        elif action == "delete":
            driver.delete_instance(node_ref(argv[1]), argv[2])
        elif action == "leftovers":
            conn = driver.conn()
            names = {os_driver.SERVER_PREFIX + i for i in argv[1:]}
            out["servers"] = [s.name for s in conn.compute.servers(all_projects=True)
                              if s.name in names]
            out["ports"] = [p.name for p in conn.network.ports() if p.name in names]
        elif action == "inventory":
            out["inventory"] = driver.inventory()
    except exception.MecError as e:
        out["error"] = {"type": type(e).__name__, "status": e.status, "message": e.message}
    out["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
