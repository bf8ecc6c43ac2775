"""The embedded edge with TLS on (``mec-conpaas-edge up --tls``).

What a deployment with a deployment CA does, on one machine: the manager
serves HTTPS only with a certificate from ``mec-conpaas-manage ca create``
for the master's address; the edge's join token is created after the CA,
so it pins it (``<CA sha256>::<secret>``); each access point's agent checks
that pin before it sends the secret, receives its own certificate for
``<node id>.node.mec-conpaas`` and from then on serves its API, state
copies included, over HTTPS only.  The manager and the other agents verify
it against the CA for that name (manager/tls.py, agents/node/joining.py).
"""
import os
import subprocess

from mec_conpaas.agents.node import joining


class EdgeTLS:
    def __init__(self, edge):
        self.edge = edge
        self.ca_file = edge.path("master", "tls", "ca.pem")

    def is_on(self):
        """Whether this edge's manager was given a certificate (``up --tls``)."""
        return os.path.exists(self.master_groups()["tls"]["cert_file"])

    def master_groups(self):
        """The manager's ``[tls]``: its certificate and key next to the CA."""
        return {"tls": {"ca_file": self.ca_file,
                        "ca_key_file": self.edge.path("master", "tls", "ca-key.pem"),
                        "cert_file": self.edge.path("master", "tls", "manager.pem"),
                        "key_file": self.edge.path("master", "tls", "manager-key.pem")}}

    def create_ca(self, manage):
        """The deployment CA and the manager's certificate for the master's
        address on the edge (kept if already made)."""
        subprocess.run(manage + ["ca", "create", "--name", self.edge.net.master_address()],
                       check=True, capture_output=True)

    def client_context(self):
        return joining.tls_context(self.ca_file)
