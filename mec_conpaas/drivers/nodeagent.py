"""Clients of the agents on an access point: its node agent and the
service agents in its instances.

Whatever creates the containers (the node agent itself under ``lxc``,
nova under ``openstack``), every access point runs a node agent that owns
its data path: HAProxy, freeze/thaw, state copy, logs, usage reports.  The
manager and the drivers reach it only through :class:`NodeAgentClient`,
so its address, port and token live in one object, and a driver that
creates instances elsewhere still has the AP-local calls at hand.
"""
import time

from mec_conpaas import exception
from mec_conpaas.agents.node import httpserver
from mec_conpaas.agents.node import isolation

SERVICE_AGENT_PORT = 8999


class NodeAgentClient:
    """One access point's node agent (``GET /v1/health``, ``PUT /v1/proxy``,
    ``/v1/instances/...``)."""

    def __init__(self, address, port, token, server_name=None, tls=None):
        self.address = address
        self.port = port
        self.token = token
        # HTTPS (the certificate issued at join, manager/tls.py): the
        # deployment CA's context and the name the certificate must carry.
        self.server_name = server_name
        self.tls = tls if server_name else None

    def __repr__(self):
        return "NodeAgentClient(%s)" % self.url

    @property
    def url(self):
        return "%s://%s:%d" % ("https" if self.tls else "http", self.address, self.port)

    def peer(self):
        """How another node agent reaches this one (state pull and push)."""
        peer = {"url": self.url, "token": self.token}
        if self.tls:
            peer["server_name"] = self.server_name
        return peer

    def call(self, method, path, body=None, timeout=60, raw=False):
        """A request to the node agent; NodeError carries its message."""
        return httpserver.call(method, self.url + path, self.token, body,
                               timeout=timeout, raw=raw,
                               content_type="application/x-tar", tls=self.tls,
                               server_name=self.server_name)

    def health(self, timeout=5):
        return self.call("GET", "/v1/health", timeout=timeout)

    def put_proxies(self, services, instance_networks, timeout=30):
        """Replace this AP's HAProxy plan (every service's servers)."""
        return self.call("PUT", "/v1/proxy", {
            "services": services, "instance_networks": instance_networks},
            timeout=timeout)

    def instance_call(self, method, instance_id, path="", body=None, timeout=60,
                      raw=False):
        return self.call(method, "/v1/instances/%s%s" % (instance_id, path), body,
                         timeout=timeout, raw=raw)

    def logs(self, instance_id):
        return self.instance_call("GET", instance_id, "/logs")["log"]

    def state_manifest(self, instance_id, snapshot=False):
        """The manifest of an instance's state directory; ``snapshot``: a
        read only, leaving the base of a migration's delta untouched."""
        return self.instance_call("GET", instance_id, "/state/manifest",
                                  {"snapshot": True} if snapshot else None,
                                  timeout=30)["manifest"]

    def state_export(self, instance_id, paths):
        """A tar of the named files of an instance's state directory."""
        return self.instance_call("POST", instance_id, "/state/export",
                                  {"paths": paths}, timeout=300, raw=True)

    def service_agent(self, instance_id, address):
        """The service agent of an instance on this node (its secret derives
        from this node's token)."""
        return ServiceAgentClient(address, isolation.agent_secret(self.token,
                                                                  instance_id))


class ServiceAgentClient:
    """The service agent in one instance (``/health``, ``/start``,
    ``/restore``, ``/notify``, ``/stop``)."""

    def __init__(self, address, secret, port=SERVICE_AGENT_PORT):
        self.address = address
        self.secret = secret
        self.port = port

    def call(self, method, path, body=None, timeout=10):
        return httpserver.call(method, "http://%s:%d%s" % (
            self.address, self.port, path), self.secret, body=body, timeout=timeout)

    def post(self, path, body=None, timeout=10, wait_up=0):
        """POST; with ``wait_up`` (seconds), retry while the container is
        still booting (nothing listens yet)."""
        deadline = time.monotonic() + wait_up
        while True:
            try:
                return self.call("POST", path, body or {}, timeout=timeout)
            except exception.NodeError as e:
                if getattr(e, "remote_status", None) or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def wait_healthy(self, timeout):
        """Wait for the agent's health; its answer says why it is not
        healthy yet."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                resp = self.call("GET", "/health", timeout=2)
                if resp and resp.get("healthy"):
                    return resp
                last = resp.get("detail") if resp else last
            except exception.NodeError as e:
                last = e.message
            time.sleep(0.1)
        raise exception.NodeError("instance %s did not become healthy within "
                                  "%ds: %s" % (self.address, timeout, last))
