"""Tenant isolation on an access point: who may talk to an instance.

Every node agent (embedded edge and deployed Pis alike) owns one nftables
table per family, ``bridge mec_isolation`` and ``inet mec_isolation``, in
the network namespace it runs in, and rewrites them atomically whenever the
manager tells it which instances belong to which service (``PUT
/v1/proxy``) and whenever an instance starts or stops here:

* an instance may open connections to instances of its own service only
  (same access point: bridged, checked in the bridge table; other access
  points: routed over the backbone, checked in the inet table on both
  ends); other tenants' instances are dropped;
* Wi-Fi users (``[node_agent] client_interfaces``) never reach an instance
  address: they use the access points' endpoints (HAProxy ports);
* an instance never reaches a node agent's API, nor ``[node_agent]
  instance_denied_ports`` (the manager's, OpenStack's) outside the instance networks;
* everything else is left alone: the manager and the access points'
  HAProxies (not in any instance network) reach every instance for health
  checks and traffic, and instances reach the endpoints and the outside.

The rules are stateless (no connection tracking: the bridge family has
none on this kernel), which works because every allowed instance-to-
instance flow is symmetric.  Each instance's bridge port may only send
its own address (IPv4 and ARP; nothing else, so no IPv6 link-local
detour), or a container could borrow a peer's address to get through.

The last desired state is kept in ``$state_path/isolation.json`` so a
restarted agent restores the rules before the manager talks to it again;
the tables stay while the agent is down (instances stay isolated).  New
membership is applied in the background, a few milliseconds after the
proxy switch answered (``GET /v1/health`` shows ``isolation``: ``ok`` or
the error).
"""
import ctypes
import ipaddress
import json
import logging
import os
import re
import threading

from mec_conpaas import digest
from mec_conpaas import exception

LOG = logging.getLogger(__name__)
TABLE = "mec_isolation"
FAMILIES = ("bridge", "inet")


def agent_secret(node_token, instance_id):
    """The per-instance secret of a service agent's API.

    Derived from the node agent's token, so the node that starts the
    instance and the manager (which holds every node's token) agree on it
    without storing or sending it; one instance's secret tells nothing
    about another's.
    """
    return digest.hmac_sha256(node_token.encode(),
                              b"service-agent:" + instance_id.encode()).hex()


class Nft:
    """libnftables through ctypes: one in-process, atomic transaction per
    ruleset (about a millisecond, where running ``nft`` costs tens; the
    manager switches proxies inside migration's critical window)."""

    def __init__(self):
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as e:
            raise exception.NodeError(
                "network isolation needs nftables (libnftables.so.1: %s): install "
                "the 'nftables' package, or set [node_agent] network_isolation = "
                "false" % e) from e
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)
        self.lock = threading.Lock()

    def run(self, text):
        with self.lock:
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, text.encode())
            out = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode()
            err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode()
        if rc != 0:
            raise exception.NodeError("nftables refused the isolation rules: %s"
                                      % err.strip())
        return out


def _elements(items):
    return "elements = { %s }" % ", ".join(items) if items else ""


def _names(ifnames):
    return "{ %s }" % ", ".join(json.dumps(i) for i in ifnames)


def render(services, instance_networks, ports, client_ifs, agent_port, denied_ports=()):
    """The whole ruleset (both tables) for this desired state.

    ``services``: the body of ``PUT /v1/proxy`` (per service, its near,
    far and draining instances); ``instance_networks``: every node's;
    ``ports``: this node's instance bridge ports, ``{ifname: address}``;
    ``denied_ports``: TCP ports instances may not reach outside the
    instance networks (``[node_agent] instance_denied_ports``).
    """
    nets = sorted({str(ipaddress.ip_network(n)) for n in instance_networks})
    gateways = sorted(str(next(ipaddress.ip_network(n).hosts())) for n in nets)
    members = {}
    for sid, svc in sorted(services.items()):
        addrs = {str(ipaddress.ip_address(s["addr"]))
                 for tier in ("near", "far", "draining") for s in svc.get(tier, [])}
        members["svc_" + re.sub(r"[^0-9a-zA-Z]", "", sid)[:32]] = sorted(addrs)
    sets = ["set instance_nets { type ipv4_addr; flags interval; %s }"
            % _elements(nets),
            "set gateways { type ipv4_addr; %s }" % _elements(gateways)]
    sets += ["set %s { type ipv4_addr; %s }" % (name, _elements(addrs))
             for name, addrs in members.items()]
    wifi = ["iifname %s ip daddr @instance_nets drop" % _names(client_ifs)] \
        if client_ifs else []
    ports_list = ", ".join(str(int(p)) for p in sorted(set(denied_ports)))
    denied = ["ip saddr @instance_nets ip daddr != @instance_nets tcp dport { %s } drop"
              % ports_list] if ports_list else []
    # Shared by both tables: bridged traffic meets it in the bridge table,
    # routed traffic in the inet one (and, where br_netfilter is on, both).
    peers = ["ip saddr @gateways accept",  # the nodes themselves
             # no node agent, whichever of its addresses is asked
             "ip saddr @instance_nets ip daddr @gateways tcp dport %d drop" % agent_port,
             "ip saddr @instance_nets ip daddr != @instance_nets tcp dport %d drop"
             % agent_port] + denied + [
             "ip daddr @gateways accept"] + wifi + [
             "ip saddr != @instance_nets accept",
             "ip daddr != @instance_nets accept"]
    peers += ["ip saddr @%s ip daddr @%s accept" % (n, n) for n in members]
    peers.append("drop")
    spoof = []
    for ifname, addr in sorted(ports.items()):
        name, addr = json.dumps(ifname), str(ipaddress.ip_address(addr))
        spoof += ["iifname %s ether type ip ip saddr != %s drop" % (name, addr),
                  "iifname %s ether type arp arp saddr ip != %s drop" % (name, addr),
                  "iifname %s ether type != { ip, arp } drop" % name]
    chains = {
        # Broadcast and multicast between bridge ports would reach every
        # tenant's instances on this access point.
        "bridge": [("prerouting", spoof),
                   ("forward", ["ether type != ip accept", "ip daddr 224.0.0.0/3 drop"]
                    + peers)],
        "inet": [("forward", ["meta nfproto != ipv4 accept"] + peers),
                 ("input", ['iifname != "lo" ip saddr @instance_nets ip saddr != @gateways '
                            'tcp dport %d drop' % agent_port]
                  + (['iifname != "lo" ip saddr @instance_nets ip saddr != @gateways '
                      'tcp dport { %s } drop' % ports_list] if ports_list else []))],
    }
    out = []
    for family in FAMILIES:
        out += ["table %s %s" % (family, TABLE), "delete table %s %s" % (family, TABLE),
                "table %s %s {" % (family, TABLE)]
        out += ["  " + s for s in sets]
        for hook, rules in chains[family]:
            out.append("  chain %s {" % hook)
            out.append("    type filter hook %s priority filter; policy accept;" % hook)
            out += ["    " + r for r in rules]
            out.append("  }")
        out.append("}")
    return "\n".join(out) + "\n"


def _set_names(text):
    return set(re.findall(r"^  set (\S+) \{", text, re.M))


def in_place(text, previous):
    """``text`` (``render``'s) as an update of the tables ``previous``
    created: flush their rules and set elements and declare them again,
    dropping the sets no longer there, in one transaction.

    Why not ``render``'s delete-and-create every time: deleting the tables
    unregisters their base chains' hooks and creating them registers new
    ones, and packets crossing the node while that commits were lost.  In
    the embedded edge, with every proxy switch (which rewrites the rules),
    about 1 % of a 10 ms client's connections lost a SYN and waited for
    TCP's 1 s retransmission, and the proxy's connections to the new
    instance too (``nstat`` TcpExtTCPSynRetrans in the client's and the
    access point's namespaces; none with ``network_isolation = false``).
    """
    lines = []
    for line in text.splitlines():
        m = re.match(r"(table|delete table) (\S+ \S+)$", line)
        if m:
            if m.group(1) == "table":
                lines.append("flush table " + m.group(2))
            continue
        lines.append(line)
    for name in sorted(_set_names(previous) - _set_names(text)):
        lines += ["delete set %s %s %s" % (family, TABLE, name) for family in FAMILIES]
    return "\n".join(lines) + "\n"


class Isolation:

    def __init__(self, conf, ports=dict):
        opts = conf.node_agent
        # Backend 'none' hosts no instance: nothing to filter.  Under 'nova'
        # the instances' ports are on neutron's brq bridge of this node and
        # instance_network is the provider network they are on.
        self.enabled = opts.network_isolation and opts.container_backend in ("libvirt",
                                                                             "nova")
        self.denied_ports = list(opts.instance_denied_ports)
        self.client_ifs = list(opts.client_interfaces)
        self.agent_port = opts.bind_port
        self.own_network = opts.instance_network
        self.ports = ports
        self.path = os.path.join(conf.state_path, "isolation.json")
        self.lock = threading.Lock()        # self.desired
        self.apply_lock = threading.Lock()  # the tables
        self.nft = Nft() if self.enabled else None
        self.applied = None
        self.error = None
        self.worker = None
        self.wake = threading.Event()
        try:
            with open(self.path) as f:
                self.desired = json.load(f)
        except (OSError, ValueError):
            self.desired = {"services": {}, "instance_networks": []}

    def update(self, services, instance_networks=None):
        """New service membership from the manager, applied by a background
        thread: the manager's proxy switch (inside migration's critical
        window) does not wait for it.  Bursts are coalesced; the newest
        state always wins."""
        if not self.enabled:
            return
        with self.lock:
            self.desired = {"services": services,
                            "instance_networks": list(instance_networks or
                                                      self.desired["instance_networks"])}
            if self.worker is None:
                self.worker = threading.Thread(target=self._work, daemon=True,
                                               name="isolation")
                self.worker.start()
        self.wake.set()

    def _work(self):
        saved = None
        while True:
            self.wake.wait()
            self.wake.clear()
            try:
                with self.lock:
                    desired = self.desired
                if desired != saved:
                    tmp = self.path + ".tmp"
                    with open(tmp, "w") as f:
                        json.dump(desired, f)
                    os.replace(tmp, self.path)
                    saved = desired
                self.apply()
            except Exception as e:  # keep serving; the next change retries
                self.error = str(getattr(e, "message", e))
                LOG.error("isolation rules not applied: %s", self.error)

    def status(self):
        if not self.enabled:
            return "off"
        return "error: " + self.error if self.error else "ok"

    def apply(self):
        """Converge the tables on the desired state and this node's ports."""
        if not self.enabled:
            return
        with self.lock:
            desired = self.desired
        with self.apply_lock:
            nets = set(desired["instance_networks"]) | {self.own_network}
            text = render(desired["services"], nets, self.ports(),
                          self.client_ifs, self.agent_port, self.denied_ports)
            if text != self.applied:
                try:
                    self.nft.run(text if self.applied is None
                                 else in_place(text, self.applied))
                except exception.NodeError as e:
                    self.error = e.message
                    raise
                self.applied, self.error = text, None
