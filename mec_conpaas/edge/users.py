"""Emulated Wi-Fi users that move between the embedded edge's access points.

A user is a network namespace (``<prefix>u-<name>``; the fixed per-AP
users ``cl-N`` keep their ``<prefix>cl-N``) with one veth: ``wlan0`` on the
user's side, ``u-<name>`` on the access point's.  Attaching the user to an
AP moves the AP end into that AP's namespace and onto its Wi-Fi bridge
(network.WIFI_AP_IF), whose node agent then reports the station
(agents/node/stations.py reads the port's alias); the user renews its
address from the new AP's client network, as after a DHCP exchange.
Detaching parks the AP end, down, in the user's own namespace.

Everything here is ``ip`` commands on named namespaces, so the same code
runs from ``mec-conpaas-edge`` on the host and from a node agent (which
pulls a user onto its own AP for ``mec-conpaas user attach``).
"""
import ipaddress
import json
import os
import re
import subprocess

from mec_conpaas.edge import network as net_mod

USER_RE = re.compile(r"^[a-z][a-z0-9-]{0,10}$")
FIRST_HOST = 10  # users' addresses start at .10 of a client network


class UserError(Exception):
    pass


def run(*cmd, check=True):
    return net_mod.run(*cmd, check=check)


def _netns_list():
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()]


class Users:
    """``prefix``: the edge's namespace prefix; ``ap_netns``: ``{ap: its
    namespace}``; ``wifi_ms``: the Wi-Fi hop's one-way delay, put on a new
    user's side with netem when ``netem`` (else the AP's delay line does)."""

    def __init__(self, prefix, ap_netns, netem_ms=None, can_create=True):
        self.prefix = prefix
        # A node agent runs in a mount namespace of its own, where a new
        # named namespace would not be seen by anyone else.
        self.can_create = can_create
        self.ap_netns = dict(ap_netns)
        self.netem_ms = netem_ms

    def netns(self, user):
        if re.match(r"^cl-[0-9]+$", user):
            return self.prefix + user
        return self.prefix + "u-" + user

    @staticmethod
    def port(user):
        return "u-" + user

    def where(self, user):
        """The AP ``user`` is attached to, None if detached; UserError if
        there is no such user."""
        port = self.port(user)
        for ap, ns in self.ap_netns.items():
            if run("ip", "-n", ns, "link", "show", port, check=False).returncode == 0:
                return ap
        if self.netns(user) in _netns_list():
            return None
        raise UserError("no user %r on this edge (mec-conpaas-edge user list shows "
                        "them; 'user attach' makes one)" % user)

    def exists(self, user):
        return self.netns(user) in _netns_list()

    def _create(self, user):
        ns, port = self.netns(user), self.port(user)
        run("ip", "netns", "add", ns)
        try:
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "add", port, "type", "veth", "peer", "name",
                net_mod.WIFI_CLIENT_IF)
            run("ip", "-n", ns, "link", "set", net_mod.WIFI_CLIENT_IF, "up")
            if self.netem_ms:
                run("tc", "-n", ns, "qdisc", "replace", "dev", net_mod.WIFI_CLIENT_IF,
                    "root", "netem", "delay", "%gms" % self.netem_ms)
        except RuntimeError:
            run("ip", "netns", "del", ns, check=False)
            raise

    def _bridge(self, ap):
        """The AP's Wi-Fi address and prefix length."""
        out = json.loads(run("ip", "-n", self.ap_netns[ap], "-j", "addr", "show",
                             net_mod.WIFI_AP_IF).stdout)
        for a in out[0].get("addr_info", []):
            if a.get("family") == "inet" and a.get("prefixlen", 32) < 32:
                return a["local"], a["prefixlen"]
        raise UserError("access point %s has no Wi-Fi address" % ap)

    def _taken(self, ap):
        out = json.loads(run("ip", "-n", self.ap_netns[ap], "-j", "-d", "link", "show",
                             "master", net_mod.WIFI_AP_IF).stdout or "[]")
        taken = set()
        for link in out:
            for w in (link.get("ifalias") or "").split():
                if w.startswith("ip="):
                    taken.add(w[3:])
        return taken

    def _lease(self, ap):
        """A free address of the AP's client network (the lowest from .10)."""
        gw, plen = self._bridge(ap)
        net = ipaddress.ip_network("%s/%d" % (gw, plen), strict=False)
        taken = self._taken(ap) | {gw}
        for n, host in enumerate(net.hosts(), 1):
            if n >= FIRST_HOST and str(host) not in taken:
                return gw, plen, str(host)
        raise UserError("access point %s has no free user address in %s" % (ap, net))

    def attach(self, user, ap):
        """Attach ``user`` to ``ap`` (creating the user on first use, moving
        it when attached elsewhere); returns ``(previous AP or None, address)``."""
        if not USER_RE.match(user):
            raise UserError("user name %r: use 1-11 lowercase letters, digits or "
                            "'-', starting with a letter" % user)
        if ap not in self.ap_netns:
            raise UserError("unknown access point %r (this edge has %s)" % (
                ap, ", ".join(sorted(self.ap_netns))))
        if not self.exists(user):
            if not self.can_create:
                raise UserError("no user %r on this edge: people are made on the "
                                "edge's host (mec-conpaas-edge user attach %s %s)"
                                % (user, user, ap))
            self._create(user)
        before = self.where(user)
        if before == ap:
            return before, self.address(user)
        ns, port, dst = self.netns(user), self.port(user), self.ap_netns[ap]
        gw, plen, addr = self._lease(ap)
        src = ["ip", "-n", self.ap_netns[before]] if before else ["ip", "-n", ns]
        run(*src, "link", "set", port, "netns", dst)
        mac = net_mod.link_mac(ns, net_mod.WIFI_CLIENT_IF)
        run("ip", "-n", dst, "link", "set", port, "alias",
            net_mod.station_alias(user, mac, addr))
        run("ip", "-n", dst, "link", "set", port, "master", net_mod.WIFI_AP_IF, "up")
        # The address renewal: the old lease goes with the old AP.
        run("ip", "-n", ns, "addr", "flush", "dev", net_mod.WIFI_CLIENT_IF)
        run("ip", "-n", ns, "addr", "add", "%s/%d" % (addr, plen), "dev",
            net_mod.WIFI_CLIENT_IF)
        run("ip", "-n", ns, "route", "replace", "default", "via", gw)
        return before, addr

    def detach(self, user):
        """Take ``user`` off its AP; returns the AP it was on (None: it was
        not attached)."""
        before = self.where(user)
        if before is None:
            return None
        ns, port = self.netns(user), self.port(user)
        run("ip", "-n", self.ap_netns[before], "link", "set", port, "down")
        run("ip", "-n", self.ap_netns[before], "link", "set", port, "netns", ns)
        run("ip", "-n", ns, "addr", "flush", "dev", net_mod.WIFI_CLIENT_IF)
        return before

    def address(self, user):
        out = json.loads(run("ip", "-n", self.netns(user), "-j", "addr", "show",
                             net_mod.WIFI_CLIENT_IF).stdout)
        for a in out[0].get("addr_info", []):
            if a.get("family") == "inet":
                return a["local"]
        return None

    def list(self):
        users = []
        for ns in _netns_list():
            if ns.startswith(self.prefix + "u-"):
                name = ns[len(self.prefix) + 2:]
            elif re.match(re.escape(self.prefix) + r"cl-[0-9]+$", ns):
                name = ns[len(self.prefix):]
            else:
                continue
            users.append({"user": name, "ap": self.where(name),
                          "address": self.address(name), "netns": ns})
        return sorted(users, key=lambda u: u["user"])

    def remove(self, user):
        """Delete a (non-fixed) user: detach it, then its namespace."""
        if re.match(r"^cl-[0-9]+$", user):
            raise UserError("%s is an access point's fixed user: it goes with the "
                            "edge" % user)
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
           and not ns.startswith(prefix + "u-")
           and not re.match(re.escape(prefix) + r"cl-[0-9]+$", ns)}
    return Users(prefix, aps, can_create=False), own
