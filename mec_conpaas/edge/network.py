"""Network namespaces, links and routes of the embedded edge.

Every access point is a namespace with a bridge for its containers; every
topology link is a veth pair with a /30 from the backbone network; each
namespace routes to every other node's networks over the shortest-latency
path.  The master is this machine's root namespace, which only gets routes
for the edge's own networks.
"""
import dataclasses
import heapq
import ipaddress
import subprocess

BRIDGE = "mecbr0"
WIFI_AP_IF = "wifi0"
WIFI_CLIENT_IF = "wlan0"
USER_ENDPOINT = "10.242.0.1"


def run(*cmd, check=True):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), res.stderr.strip()))
    return res


def link_mac(netns, ifname):
    out = run("ip", "-n", netns, "-br", "link", "show", ifname).stdout.split()
    return out[2].lower()


def station_alias(user, mac, address):
    """What a user's bridge port says (agents/node/stations.py reads it)."""
    return "user=%s mac=%s ip=%s" % (user, mac, address)


@dataclasses.dataclass
class Link:
    a: str
    b: str
    latency_ms: float
    net: ipaddress.IPv4Network
    if_a: str
    if_b: str

    @property
    def addr_a(self):
        return str(self.net.network_address + 1)

    @property
    def addr_b(self):
        return str(self.net.network_address + 2)


class EdgeNetwork:

    def __init__(self, topology, prefix):
        self.topo = topology
        self.prefix = prefix
        self.aps = list(topology["nodes"])
        nets = ipaddress.ip_network(topology.get("backbone_network",
                                                 "10.241.0.0/24")).subnets(new_prefix=30)
        self.links = []
        for a, b, ms in topology["links"]:
            self.links.append(Link(a, b, ms, next(nets), self._ifname(a, b),
                                   self._ifname(b, a)))

    def _ifname(self, here, peer):
        name = ("%sbb-%s" % (self.prefix, peer)) if here == "master" else "bb-" + peer
        return name[:15]

    def netns(self, ap):
        return self.prefix + ap

    def wifi_aps(self):
        """Nodes with a Wi-Fi user: every node but the far cloud's
        (``kind: cloud``, policies/farcloud.py)."""
        return [n for n in self.aps if self.topo["nodes"][n].get("kind") != "cloud"]

    def client_netns(self, ap):
        return self.prefix + "cl-" + ap.split("-")[-1]

    def default_user(self, ap):
        """The fixed user of ``ap`` (namespace ``client_netns(ap)``)."""
        return "cl-" + ap.split("-")[-1]

    def user_endpoint(self):
        """The address every access point answers its users' requests on
        (``user_endpoint`` in the topology): a user sends to it wherever it
        is, as a phone sends to its gateway."""
        return self.topo.get("user_endpoint", USER_ENDPOINT)

    def ns_args(self, node):
        return [] if node == "master" else ["ip", "netns", "exec", self.netns(node)]

    def ip(self, node, *args, check=True):
        if node == "master":
            return run("ip", *args, check=check)
        return run("ip", "-n", self.netns(node), *args, check=check)

    def bridge_address(self, ap):
        net = ipaddress.ip_network(self.topo["nodes"][ap]["instance_network"])
        return str(net.network_address + 1)

    def client_addresses(self, ap):
        net = ipaddress.ip_network(self.topo["nodes"][ap]["client_network"])
        return str(net.network_address + 1), str(net.network_address + 2)

    def master_address(self):
        for link in self.links:
            if link.a == "master":
                return link.addr_a
            if link.b == "master":
                return link.addr_b
        raise RuntimeError("topology has no link to 'master'")

    # -- build -------------------------------------------------------------
    def create(self):
        for ap in self.aps:
            ns = self.netns(ap)
            run("ip", "netns", "add", ns)
            self.ip(ap, "link", "set", "lo", "up")
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # A fixed, locally administered MAC: by default a bridge takes
            # the lowest MAC of its ports, which changes with every container.
            self.ip(ap, "link", "add", BRIDGE, "address",
                    "02:4d:45:43:%02x:01" % (self.aps.index(ap) + 1), "type", "bridge")
            self.ip(ap, "addr", "add", self.bridge_address(ap) + "/%d" % (
                ipaddress.ip_network(self.topo["nodes"][ap]["instance_network"])
                .prefixlen), "dev", BRIDGE)
            self.ip(ap, "link", "set", BRIDGE, "up")
            if ap not in self.wifi_aps():
                continue
            # The Wi-Fi side: a bridge whose ports are the users (edge/users.py
            # moves them between access points), with the AP's address and
            # the users' endpoint address every AP answers on.
            ap_addr, cl_addr = self.client_addresses(ap)
            plen = ipaddress.ip_network(self.topo["nodes"][ap]["client_network"]).prefixlen
            self.ip(ap, "link", "add", WIFI_AP_IF, "address",
                    "02:4d:45:43:%02x:02" % (self.aps.index(ap) + 1), "type", "bridge")
            self.ip(ap, "addr", "add", "%s/%d" % (ap_addr, plen), "dev", WIFI_AP_IF)
            self.ip(ap, "addr", "add", self.user_endpoint() + "/32", "dev", WIFI_AP_IF)
            self.ip(ap, "link", "set", WIFI_AP_IF, "up")
            # One fixed emulated Wi-Fi user per access point (cl-N).
            cns = self.client_netns(ap)
            run("ip", "netns", "add", cns)
            run("ip", "-n", cns, "link", "set", "lo", "up")
            port = "u-" + self.default_user(ap)
            self.ip(ap, "link", "add", port, "type", "veth", "peer", "name",
                    WIFI_CLIENT_IF, "netns", cns)
            run("ip", "-n", cns, "addr", "add", "%s/%d" % (cl_addr, plen), "dev",
                WIFI_CLIENT_IF)
            run("ip", "-n", cns, "link", "set", WIFI_CLIENT_IF, "up")
            run("ip", "-n", cns, "route", "add", "default", "via", ap_addr)
            self.ip(ap, "link", "set", port, "alias", station_alias(
                self.default_user(ap), link_mac(cns, WIFI_CLIENT_IF), cl_addr))
            self.ip(ap, "link", "set", port, "master", WIFI_AP_IF, "up")
        for link in self.links:
            self._veth(link)
        self._routes()

    def _veth(self, link):
        # Create both ends in the root namespace, then move them.
        n = self.links.index(link)
        tmp_a, tmp_b = "%slk%da" % (self.prefix, n), "%slk%db" % (self.prefix, n)
        run("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        for tmp, node, name, addr in ((tmp_a, link.a, link.if_a, link.addr_a),
                                      (tmp_b, link.b, link.if_b, link.addr_b)):
            if node != "master":
                run("ip", "link", "set", tmp, "netns", self.netns(node))
            self.ip(node, "link", "set", tmp, "name", name)
            self.ip(node, "addr", "add", addr + "/30", "dev", name)
            self.ip(node, "link", "set", name, "up")

    def _graph(self):
        g = {}
        for link in self.links:
            g.setdefault(link.a, []).append((link.b, link.latency_ms, link))
            g.setdefault(link.b, []).append((link.a, link.latency_ms, link))
        return g

    def next_hops(self, src):
        """First link on the shortest path from ``src`` to every node."""
        g = self._graph()
        dist, first = {src: (0.0, 0)}, {}
        heap = [(0.0, 0, src, None)]
        while heap:
            d, hops, n, via = heapq.heappop(heap)
            if (d, hops) > dist.get(n, (float("inf"), 0)):
                continue
            if via is not None:
                first.setdefault(n, via)
            for m, w, link in g.get(n, []):
                cand = (d + w, hops + 1)
                if cand < dist.get(m, (float("inf"), 0)):
                    dist[m] = cand
                    heapq.heappush(heap, (cand[0], cand[1], m,
                                          via if via is not None else (link, m)))
        return first

    def owned_networks(self, node):
        if node == "master":
            return []
        spec = self.topo["nodes"][node]
        return [spec["instance_network"]] + (
            [spec["client_network"]] if node in self.wifi_aps() else [])

    def _routes(self):
        for src in ["master"] + self.aps:
            hops = self.next_hops(src)

            def gateway(dst, src=src, hops=hops):
                link, _peer = hops[dst]
                return link.addr_b if link.a == src else link.addr_a
            for dst in hops:
                for net in self.owned_networks(dst):
                    self.ip(src, "route", "replace", net, "via", gateway(dst))
            # Link subnets not attached here: via the nearer of their ends.
            for lk in self.links:
                if src in (lk.a, lk.b):
                    continue
                end = lk.a if lk.a in hops else lk.b
                self.ip(src, "route", "replace", str(lk.net), "via", gateway(end))

    def routed_locally(self, address):
        """True if the root namespace reaches ``address`` through this
        edge's own link: never probe an address that would leave the
        machine by the default route."""
        master_ifs = {lk.if_a if lk.a == "master" else lk.if_b for lk in self.links
                      if "master" in (lk.a, lk.b)}
        out = run("ip", "-o", "route", "get", address, check=False).stdout.split()
        if "dev" in out:
            dev = out[out.index("dev") + 1]
            return dev in master_ifs or (dev == "lo" and address == self.master_address())
        return False

    # -- teardown ----------------------------------------------------------
    def existing_netns(self):
        out = run("ip", "netns", "list", check=False).stdout
        return [line.split()[0] for line in out.splitlines()
                if line.split() and line.split()[0].startswith(self.prefix)]

    def destroy(self):
        for link in self.links:
            for node, name in ((link.a, link.if_a), (link.b, link.if_b)):
                if node == "master":
                    run("ip", "link", "del", name, check=False)
        for ns in self.existing_netns():
            pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                run("kill", "-9", pid, check=False)
            run("ip", "netns", "del", ns, check=False)
