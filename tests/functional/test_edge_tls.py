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

import pytest

from mec_conpaas.manager import tls
from tests.functional.conftest import migrate_journal_under_load
from tests.functional.conftest import private_edge

TOPOLOGY = os.path.join(os.path.dirname(__file__), "edge-topology-tls.yaml")
PREFIX = "mcs-"


@pytest.fixture(scope="module")
def tls_edge():
    with private_edge(PREFIX, 9697, TOPOLOGY, tls=True, node_heartbeat_timeout=6,
                      health_timeout=30, node_lost_grace=0) as b:
        yield b


def _agent_certificate(edge, ap, server_name):
    """The agent's certificate, verified against the deployment CA for
    ``server_name`` (ssl raises otherwise)."""
    ctx = ssl.create_default_context(cafile=edge.tls.ca_file)
    with socket.create_connection((edge.net.bridge_address(ap), 9681), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname=server_name) as t:
            return t.getpeercert()


def test_service_created_served_and_migrated_over_tls(tmp_path, tls_edge):
    edge, admin = tls_edge.edge, tls_edge.client
    assert edge.manager_url().startswith("https://")
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
    window, summary = migrate_journal_under_load(edge, admin, tmp_path, interval=0.05)
    print("over TLS: freeze to switch %s ms; %s" % (window["freeze_to_switch"], summary))
