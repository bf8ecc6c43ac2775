"""Emulated Wi-Fi users that move between the embedded edge's access points.

A user is a network namespace (``<prefix>u-<name>``) holding the user's
side of a veth pair (``wlan0`` or ``wlan1``); the other end
(``u0-<name>`` / ``u1-<name>``) is a port of an access point's Wi-Fi
bridge (network.WIFI_AP_IF), whose alias names the user, its MAC and its
address: the AP's node agent reports it as a station
(agents/node/stations.py).  The fixed per-AP users ``cl-N`` are stations
too but do not move.

A handover is make-before-break, as a phone that roams keeps its old
association until the new one works: the user gets a second link to the
new AP with an address from that AP's client network (a DHCP renewal) and
its default route moves there, so new connections go to the new AP; the
connections already open keep their old source address, which a policy
route still sends through the old link, and the old link goes once they
have ended (at most ``grace`` s).  A request in flight during the
handover is therefore not lost.

Everything here is ``ip`` commands on named namespaces, so the same code
runs from ``mec-conpaas-edge`` on the host and from a node agent (which
pulls a user onto its own AP for ``mec-conpaas user attach``).
"""
import ipaddress
import json
import os
import re
import time

from mec_conpaas.edge import network as net_mod

USER_RE = re.compile(r"^[a-z][a-z0-9-]{0,10}$")
FIXED_RE = re.compile(r"^cl-[0-9]+$")
FIRST_HOST = 10  # users' addresses start at .10 of a client network
OLD_TABLE = 100  # the old link's routing table during a handover


class UserError(Exception):
    pass


def run(*cmd, check=True):
    return net_mod.run(*cmd, check=check)


def _netns_list():
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()]


def _json(*cmd):
    return json.loads(run(*cmd).stdout or "[]")


class Users:
    """``prefix``: the edge's namespace prefix; ``ap_netns``: ``{ap: its
    namespace}``; ``netem_ms``: the Wi-Fi hop's one-way delay, put on a
    user's side with netem when the edge shapes with netem (else the AP's
    delay line delays the whole bridge)."""

    def __init__(self, prefix, ap_netns, netem_ms=None, can_create=True, grace=2.0):
        self.prefix = prefix
        self.ap_netns = dict(ap_netns)
        self.netem_ms = netem_ms
        # A node agent runs in a mount namespace of its own, where a new
        # named namespace would not be seen by anyone else.
        self.can_create = can_create
        self.grace = grace

    def netns(self, user):
        return self.prefix + user if FIXED_RE.match(user) else self.prefix + "u-" + user

    @staticmethod
    def port(user, slot):
        return "u%d-%s" % (slot, user)

    def exists(self, user):
        return self.netns(user) in _netns_list()

    def _check(self, user):
        if not USER_RE.match(user):
            raise UserError("user name %r: use 1-11 lowercase letters, digits or "
                            "'-', starting with a letter" % user)
        if FIXED_RE.match(user):
            raise UserError("%s is an access point's fixed user: it does not move "
                            "(attach a user of another name)" % user)

    def _links(self, user):
        """``{slot: {"addr", "gw"}}`` of the user's links, and the current
        slot (the one the main default route uses), or None."""
        ns = self.netns(user)
        links, current = {}, None
        for link in _json("ip", "-n", ns, "-j", "addr", "show"):
            m = re.match(r"^wlan([01])$", link["ifname"])
            if m:
                addr = next((a["local"] for a in link.get("addr_info", [])
                             if a.get("family") == "inet"), None)
                links[int(m.group(1))] = {"addr": addr}
        for r in _json("ip", "-n", ns, "-j", "route", "show", "default"):
            m = re.match(r"^wlan([01])$", r.get("dev", ""))
            if m:
                current = int(m.group(1))
                links[current]["gw"] = r.get("gateway")
        return links, current

    def _ap_of_port(self, port):
        for ap, ns in self.ap_netns.items():
            if run("ip", "-n", ns, "link", "show", port, check=False).returncode == 0:
                return ap
        return None

    def where(self, user):
        """The AP ``user`` is attached to (None: detached); UserError if
        there is no such user."""
        if FIXED_RE.match(user):
            for ap, ns in self.ap_netns.items():
                if ns.endswith(user.split("-")[1]):
                    return ap
        if not self.exists(user):
            raise UserError("no user %r on this edge (mec-conpaas-edge user list "
                            "shows them; 'user attach' makes one)" % user)
        _, current = self._links(user)
        return None if current is None else self._ap_of_port(self.port(user, current))

    def _create(self, user):
        ns = self.netns(user)
        run("ip", "netns", "add", ns)
        try:
            run("ip", "-n", ns, "link", "set", "lo", "up")
        except RuntimeError:
            run("ip", "netns", "del", ns, check=False)
            raise

    def _bridge(self, ap):
        """The AP's Wi-Fi address and prefix length."""
        out = _json("ip", "-n", self.ap_netns[ap], "-j", "addr", "show",
                    net_mod.WIFI_AP_IF)
        for a in out[0].get("addr_info", []):
            if a.get("family") == "inet" and a.get("prefixlen", 32) < 32:
                return a["local"], a["prefixlen"]
        raise UserError("access point %s has no Wi-Fi address" % ap)

    def _lease(self, ap):
        """A free address of the AP's client network (the lowest from .10)."""
        gw, plen = self._bridge(ap)
        net = ipaddress.ip_network("%s/%d" % (gw, plen), strict=False)
        taken = {gw}
        for link in _json("ip", "-n", self.ap_netns[ap], "-j", "-d", "link", "show",
                          "master", net_mod.WIFI_AP_IF):
            for w in (link.get("ifalias") or "").split():
                if w.startswith("ip="):
                    taken.add(w[3:])
        for n, host in enumerate(net.hosts(), 1):
            if n >= FIRST_HOST and str(host) not in taken:
                return gw, plen, str(host)
        raise UserError("access point %s has no free user address in %s" % (ap, net))

    def attach(self, user, ap):
        """Attach ``user`` to ``ap`` (making the user on first use, handing it
        over when it is attached elsewhere); returns ``(previous AP or
        None, address)``."""
        self._check(user)
        if ap not in self.ap_netns:
            raise UserError("unknown access point %r (this edge has %s)" % (
                ap, ", ".join(sorted(self.ap_netns))))
        if not self.exists(user):
            if not self.can_create:
                raise UserError("no user %r on this edge: people are made on the "
                                "edge's host (mec-conpaas-edge user attach %s %s)"
                                % (user, user, ap))
            self._create(user)
        ns = self.netns(user)
        links, cur = self._links(user)
        before = None if cur is None else self._ap_of_port(self.port(user, cur))
        if before == ap:
            return before, links[cur]["addr"]
        new = 1 if cur == 0 else 0
        wlan, port, dst = "wlan%d" % new, self.port(user, new), self.ap_netns[ap]
        run("ip", "-n", ns, "link", "del", wlan, check=False)  # a leftover
        gw, plen, addr = self._lease(ap)
        run("ip", "-n", ns, "link", "add", wlan, "type", "veth", "peer", "name", port)
        try:
            run("ip", "-n", ns, "link", "set", port, "netns", dst)
            run("ip", "-n", dst, "link", "set", port, "alias", net_mod.station_alias(
                user, net_mod.link_mac(ns, wlan), addr))
            run("ip", "-n", dst, "link", "set", port, "master", net_mod.WIFI_AP_IF, "up")
            if self.netem_ms:
                run("tc", "-n", ns, "qdisc", "replace", "dev", wlan, "root", "netem",
                    "delay", "%gms" % self.netem_ms)
            run("ip", "-n", ns, "addr", "add", "%s/%d" % (addr, plen), "dev", wlan)
            run("ip", "-n", ns, "link", "set", wlan, "up")
            if cur is not None:
                old = links[cur]
                # Open connections keep the old link until they end.
                run("ip", "-n", ns, "route", "replace", "default", "via", old["gw"],
                    "dev", "wlan%d" % cur, "table", str(OLD_TABLE))
                run("ip", "-n", ns, "rule", "add", "from", old["addr"], "table",
                    str(OLD_TABLE), "priority", "100")
            run("ip", "-n", ns, "route", "replace", "default", "via", gw, "dev", wlan,
                "src", addr)
        except RuntimeError:
            run("ip", "-n", ns, "link", "del", wlan, check=False)
            raise
        if cur is not None:
            self._break(user, cur, links[cur]["addr"])
        return before, addr

    def _open_from(self, ns, addr):
        out = run("ip", "netns", "exec", ns, "ss", "-Htn", "src", addr,
                  check=False).stdout
        return [line for line in out.splitlines()
                if line.strip() and not line.startswith("TIME-WAIT")]

    def _break(self, user, slot, addr):
        """The old link goes once no connection uses its address (at most
        ``grace`` s: a long download is cut as out of radio range)."""
        ns = self.netns(user)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and self._open_from(ns, addr):
            time.sleep(0.01)
        run("ip", "-n", ns, "rule", "del", "from", addr, "table", str(OLD_TABLE),
            check=False)
        run("ip", "-n", ns, "route", "flush", "table", str(OLD_TABLE), check=False)
        run("ip", "-n", ns, "link", "del", "wlan%d" % slot, check=False)

    def detach(self, user):
        """Take ``user`` off its AP; returns the AP it was on (None: it was
        not attached)."""
        self._check(user)
        before = self.where(user)
        links, _ = self._links(user)
        for slot in links:
            run("ip", "-n", self.netns(user), "link", "del", "wlan%d" % slot,
                check=False)
        return before

    def address(self, user):
        links, cur = self._links(user)
        return None if cur is None else links[cur]["addr"]

    def list(self):
        users = []
        for ns in _netns_list():
            if ns.startswith(self.prefix + "u-"):
                name = ns[len(self.prefix) + 2:]
                users.append({"user": name, "ap": self.where(name),
                              "address": self.address(name), "netns": ns})
        return sorted(users, key=lambda u: u["user"])

    def remove(self, user):
        """Delete a user: detach it, then its namespace."""
        self.detach(user)
        run("ip", "netns", "del", self.netns(user))


def for_edge(edge):
    """The users of a running embedded edge (cluster.Edge)."""
    try:
        mode = open(edge.path("shaping")).read().strip()
    except OSError:
        mode = None
    netem = float(edge.topo.get("wifi_latency_ms", 0)) if mode == "netem" else None
    return Users(edge.prefix, {ap: edge.net.netns(ap) for ap in edge.net.aps}, netem)


def own_netns():
    """The name of the network namespace this process runs in (a node
    agent started with ``nsenter --net=/run/netns/NAME``), or None."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
        for name in os.listdir("/run/netns"):
            if os.stat(os.path.join("/run/netns", name)).st_ino == mine:
                return name
    except OSError:
        pass
    return None


def on_this_ap(node_name):
    """The users as a node agent on the embedded edge sees them: ``(Users,
    this AP's key)``, every AP namespace of the edge found by its prefix
    (this agent's namespace is ``<prefix><node_name>``).  None when this
    process is not in such a namespace (a real AP)."""
    own = own_netns()
    if not own or not own.endswith(node_name):
        return None
    prefix = own[:-len(node_name)]
    aps = {ns: ns for ns in _netns_list() if ns.startswith(prefix)
           and not ns.startswith(prefix + "u-") and not FIXED_RE.match(ns[len(prefix):])}
    return Users(prefix, aps, can_create=False), own
