"""The embedded edge with TLS on (``mec-conpaas-edge up --tls``, edge/tls.py):
the manager serves HTTPS with the deployment CA, the access points join with
a token pinning it and serve their agent API over HTTPS only, with the
certificate the manager issued for ``<node id>.node.mec-conpaas``.  A
service is created, served to a Wi-Fi user and migrated with its state:
the manager's calls to the agents and the state copy between agents can
only have gone over TLS, checked for each node's name.

Its own edge (two access points, prefix ``mcs-``, 10.244-10.246) beside
the session's.
"""
import os
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

from mec_conpaas.cli import client as client_mod
from mec_conpaas.edge import cluster
from mec_conpaas.edge import loadgen
from mec_conpaas.edge import slots
from mec_conpaas.manager import tls
from tests.functional.conftest import Load
from tests.functional.conftest import state_file
from tests.functional.conftest import wait_op

TOPOLOGY = os.path.join(os.path.dirname(__file__), "edge-topology-tls.yaml")
PREFIX = "mcs-"


@pytest.fixture(scope="module")
def tls_edge():
    state = tempfile.mkdtemp(prefix="mec-edge-tls-")
    prefix, port, topology = slots.apply(PREFIX, 9697, TOPOLOGY, state)
    e = cluster.Edge(state, topology, prefix=prefix, manager_port=port, manager_opts={
        "node_heartbeat_timeout": 6, "health_timeout": 30, "node_lost_grace": 0},
        log=lambda m: print("tls edge:", m), user_credentials=False, tls=True)
    t0 = time.monotonic()
    e.up()
    print("tls edge up in %.1f s" % (time.monotonic() - t0))
    try:
        yield e
    finally:
        e.down()
        subprocess.run(["rm", "-rf", state])
        left = subprocess.run(["ip", "netns", "list"], capture_output=True,
                              text=True).stdout
        assert prefix not in left, "namespaces left behind: " + left


def _agent_certificate(edge, ap, server_name):
    """The agent's certificate, verified against the deployment CA for
    ``server_name`` (ssl raises otherwise)."""
    ctx = ssl.create_default_context(cafile=edge.tls.ca_file)
    with socket.create_connection((edge.net.bridge_address(ap), 9681), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname=server_name) as t:
            return t.getpeercert()


def test_service_created_served_and_migrated_over_tls(tmp_path, tls_edge):
    edge = tls_edge
    assert edge.manager_url().startswith("https://")
    admin = client_mod.Client(edge.manager_url(), open(edge.path("admin-token")).read()
                              .strip(), ca_cert=edge.tls.ca_file)
    # The edge's join token pins the CA; each agent serves the certificate
    # issued for its node's name, and no plain HTTP.
    token = open(edge.path("node-token")).read().strip()
    assert token.startswith(tls.ca_hash(edge.tls.ca_file) + "::")
    for ap in edge.net.aps:
        node = admin.node(ap)
        cert = _agent_certificate(edge, ap, tls.agent_server_name(node["id"]))
        assert ("DNS", tls.agent_server_name(node["id"])) in cert["subjectAltName"]
        with pytest.raises(ssl.SSLCertVerificationError):
            _agent_certificate(edge, ap, tls.agent_server_name("someone-else"))
        plain = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                "--max-time", "5", "http://%s:9681/" %
                                edge.net.bridge_address(ap)],
                               capture_output=True, text=True)
        assert plain.stdout in ("000", "400"), plain  # no HTTP answer from a TLS port
    # Created (manager -> ap-1's agent), served to ap-1's user, migrated with
    # its journal (ap-2's agent pulls it from ap-1's): every line once.
    bundle = loadgen.journal_bundle(str(tmp_path / "journal.tar.gz"))
    wait_op(admin, admin.create_service("web", "journal", node="ap-1", bundle=bundle))
    port = admin.service("journal")["port"]
    load = Load(edge, "ap-1", port, interval=0.05)
    try:
        time.sleep(0.5)
        (window,) = wait_op(admin, admin.migrate("journal", "ap-2"))["windows"]
        time.sleep(0.3)
    finally:
        results = load.stop()
    summary = loadgen.summarize(results)
    print("over TLS: freeze to switch %s ms; %s" % (window["freeze_to_switch"], summary))
    assert summary["failed"] == 0, summary
    hits = sorted(r["hits"] for r in results)
    assert hits == list(range(1, len(results) + 1)), hits
    (inst,) = [i for i in admin.service("journal")["instances"] if i["state"] == "ACTIVE"]
    assert inst["node"] == "ap-2"
    journal = state_file(edge, "ap-2", inst["id"], "journal").splitlines()
    assert [int(line.split()[0]) for line in journal] == hits
    wait_op(admin, admin.delete_service("journal"))
