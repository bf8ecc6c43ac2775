"""The node agent imports only what it uses, when it uses it (issue 13: its
resident memory; bench/footprint.py measures what each import costs)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

# Loaded on first use only: the libvirt binding (~11 MB resident) when the
# agent creates, deletes or wires a container; prometheus_client at the
# first scrape; the manager's and the CLI's libraries never.
HEAVY = ("libvirt", "prometheus_client", "sqlalchemy", "requests", "cliff",
         "keystonemiddleware", "openstack", "yaml")

PROBE = r"""
import json, sys
from mec_conpaas import conf as conf_mod
from mec_conpaas.cmd import node_agent
from mec_conpaas.agents.node import agent, containers
conf = conf_mod.parse_args([])
conf.set_override("state_path", sys.argv[1])
conf.set_override("instances_path", sys.argv[1] + "/instances", group="node_agent")
conf.set_override("instance_network", "10.99.0.0/24", group="node_agent")
c = containers.LibvirtContainers(conf, fetch_bundle=None)
# What the manager's sweep and a scrape ask of a node hosting nothing.
listed, used, sizes = c.list(), c.usage(), c.sizes()
print(json.dumps({"modules": sorted(sys.modules), "listed": listed, "usage": used}))
"""


def test_agent_entry_and_an_empty_nodes_container_calls_load_nothing_heavy():
    # Searchable by others, as instances' roots must be (not pytest's 0700).
    state = tempfile.mkdtemp(prefix="mec-imports-", dir="/tmp")
    os.chmod(state, 0o711)
    try:
        res = subprocess.run([sys.executable, "-c", PROBE, state],
                             capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(state)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout)
    assert got["listed"] == [] and got["usage"] == {}
    loaded = {m.split(".")[0] for m in got["modules"]}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
