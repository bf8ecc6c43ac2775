"""The node agent imports only what it uses, when it uses it (issue 13: its
resident memory; bench/footprint.py measures what each import costs)."""
import ast
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

NODE_AGENT = os.path.join(os.path.dirname(__file__), "..", "..", "mec_conpaas",
                          "agents", "node")

# Never in the agent of an lxc-backend node: the libvirt binding (~11 MB
# resident; libvirtd is driven through virsh, states and usage are read from
# cgroups); prometheus_client (its ssl and urllib.request: /metrics is
# written by agents/node/metrics.py); the manager's and the CLI's libraries.
HEAVY = ("libvirt", "prometheus_client", "sqlalchemy", "requests", "cliff",
         "keystonemiddleware", "openstack", "yaml")

# The nova backend's modules: they use the binding (nova names its domains'
# interfaces and keeps stopped domains), the lxc backend never loads them.
NOVA_ONLY = ("mec_conpaas.agents.node.nova", "mec_conpaas.agents.node.libvirt_binding")

PROBE = r"""
import json, os, sys
from mec_conpaas.cmd import node_agent
from mec_conpaas import conf as conf_mod
from mec_conpaas.agents.node import agent, containers
conf = conf_mod.parse_args([])
conf.set_override("state_path", sys.argv[1])
conf.set_override("instances_path", sys.argv[1] + "/instances", group="node_agent")
conf.set_override("instance_network", "10.99.0.0/24", group="node_agent")
c = containers.LibvirtContainers(conf, fetch_bundle=None)
# What the manager's sweep and a scrape ask of a node hosting nothing.
empty = {"listed": c.list(), "usage": c.usage(), "sizes": c.sizes()}
# And of one whose instance is known but not running (its domain gone).
iid = "7d0c1d9e-4a43-4f5e-9d61-3c2b1a0f9e88"
os.makedirs(os.path.join(conf.node_agent.instances_path, iid))
with open(os.path.join(conf.node_agent.instances_path, iid, "meta.json"), "w") as f:
    json.dump({"id": iid, "service_id": "s", "address": "10.99.0.2",
               "idmap_slot": 0, "cpus": 0.5, "memory_mb": 128}, f)
stopped = {"info": c.info(iid)["state"], "ports": c.ports(), "usage": c.usage()}
# What an idle agent hashes: a liveness datagram, an instance's secret, its
# node id, a token.
from mec_conpaas import digest, liveness
from mec_conpaas.agents.node import isolation
k = liveness.key("credential")
beat = liveness.beat(k, "n" * 36, 1, 2)
hashed = [liveness.check_beat(k, beat), isolation.agent_secret("token", iid),
          digest.uuid5(agent.NODE_NAMESPACE, "ap|mac"), digest.token_urlsafe(32)]
# A scrape's text (the agent's own collector needs a running agent: the
# process's, test_web scrapes a real agent).
from mec_conpaas.agents.node import metrics
scraped = metrics.text(metrics.registry(None).collectors[1].collect()).decode()
modules = sorted(sys.modules)
deferred = sorted(m for m, v in sys.modules.items() if type(v).__name__ == "_Deferred")
# Deferred, not gone: a configuration source driver would still load.
import stevedore
print(json.dumps({"modules": modules, "deferred": deferred, "empty": empty,
                  "stopped": stopped, "hashed": hashed, "scraped": scraped,
                  "stevedore": stevedore.ExtensionManager.__name__}))
"""


def test_agent_entry_and_its_container_calls_load_nothing_heavy():
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
    assert got["empty"] == {"listed": [], "usage": {}, "sizes": {}}
    assert got["stopped"] == {"info": "STOPPED", "ports": {}, "usage": {}}
    loaded = {m.split(".")[0] for m in got["modules"]}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert not set(got["modules"]) & set(NOVA_ONLY), set(got["modules"]) & set(NOVA_ONLY)
    # Nor OpenSSL's libcrypto (3.4 MB): what an idle agent hashes uses
    # CPython's own SHA (mec_conpaas.digest); only TLS loads it.
    assert got["hashed"][0] is True and len(got["hashed"]) == 4
    assert "process_resident_memory_bytes " in got["scraped"]
    assert not {"_hashlib", "hashlib", "hmac", "secrets", "_ssl"} & set(got["modules"]), \
        {"_hashlib", "hashlib", "hmac", "secrets", "_ssl"} & set(got["modules"])
    # oslo.config's stevedore (entry points, importlib.metadata) is deferred
    # by the agent's entry point until something uses it.
    assert not {"stevedore.extension", "importlib.metadata"} & set(got["modules"])
    assert got["stevedore"] == "ExtensionManager"
    # ssl (http.client's import; TLS only) and tarfile (state
    # copies, bundles) wait for their first use too.
    assert {"ssl", "tarfile"} <= set(got["deferred"]), got["deferred"]


def test_only_the_nova_backend_imports_libvirt():
    """Paths the probe above cannot run (a container's start and destroy
    need libvirtd): no module of the agent but the nova backend's imports
    the binding, at any depth (in a function too)."""
    importers = []
    for path in sorted(glob.glob(os.path.join(NODE_AGENT, "*.py"))):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "libvirt" for n in names):
                importers.append(os.path.basename(path))
    assert importers and set(importers) == {m.rsplit(".", 1)[1] + ".py"
                                            for m in NOVA_ONLY}, importers
