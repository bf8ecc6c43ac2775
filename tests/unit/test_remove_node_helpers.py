"""remove-node's and add-node's helpers are scripts of their own on the master
(beside no package), so what they must agree on with the driver and with each
other is written in each: these keep the copies equal.

- the metadata key telling MEC-ConPaaS's nova servers from anyone else's
  (else every leftover of ours would read as someone else's server);
- the reason a drain disables nova-compute with, by which add-node.yml knows
  a host an unfinished removal disabled from one an admin disabled."""
import ast
import os

from mec_conpaas.drivers import openstack as openstack_driver

FILES = os.path.join(os.path.dirname(__file__), "..", "..", "roles",
                     "openstack_controller", "files")


def constants(name):
    with open(os.path.join(FILES, name)) as f:
        tree = ast.parse(f.read())
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)
            and isinstance(node.value, ast.Constant)}


def test_the_drain_reads_the_metadata_key_the_driver_writes():
    assert constants("mec_drain_node.py")["INSTANCE_PROPERTY"] == \
        openstack_driver.INSTANCE_PROPERTY


def test_add_node_knows_the_reason_the_drain_disables_with():
    assert constants("mec_drain_node.py")["DRAIN_REASON"] == \
        constants("mec_os_ensure.py")["DRAIN_REASON"]
