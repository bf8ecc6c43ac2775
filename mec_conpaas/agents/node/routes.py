"""Routes to the other nodes' subnets, as the manager lists them in each
heartbeat answer (manager/allocation.py ``routes``): one mechanism for
playbook-deployed and flashed nodes, and a node that is removed has its
routes taken away everywhere at the next heartbeat.

The agent's routes carry their own protocol number (``[join]
route_protocol``): it removes only those, and it never replaces a route to
a subnet that something else routes (a static route, the embedded edge's).
The gateway is the peer's address, or, when that address is itself
reached through a router, that router (``ip route get``).
"""
import json
import logging
import subprocess
import time

LOG = logging.getLogger(__name__)
RECHECK_S = 60  # re-read the table this often even when nothing changed


def _ip(*args, check=True):
    res = subprocess.run(("ip",) + args, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), res.stderr.strip()))
    return res


class RouteTable:

    def __init__(self, protocol):
        self.protocol = str(protocol)
        self.applied = None
        self.checked = 0.0

    def _table(self):
        out = _ip("-j", "route", "show", "table", "main").stdout
        return json.loads(out or "[]")

    def _gateway(self, via):
        got = json.loads(_ip("-j", "route", "get", via, check=False).stdout or "[]")
        if got and got[0].get("gateway"):
            return got[0]["gateway"]
        return via

    def sync(self, routes):
        """Make this node's routes exactly ``routes`` ([{subnet, via, node}]),
        leaving routes it did not install alone.  Returns what changed."""
        wanted = {r["subnet"]: r["via"] for r in routes
                  if r.get("subnet") and r.get("via")}
        now = time.monotonic()
        if wanted == self.applied and now - self.checked < RECHECK_S:
            return []
        changes = []
        table = self._table()
        ours = {r["dst"]: r for r in table if str(r.get("protocol")) == self.protocol}
        theirs = {r["dst"] for r in table if str(r.get("protocol")) != self.protocol}
        for subnet, via in sorted(wanted.items()):
            if subnet in theirs:
                continue  # routed by someone else: theirs to keep
            gateway = self._gateway(via)
            if ours.get(subnet, {}).get("gateway") == gateway:
                continue
            res = _ip("route", "replace", subnet, "via", gateway, "proto",
                      self.protocol, check=False)
            if res.returncode == 0:
                changes.append("+%s via %s" % (subnet, gateway))
            else:
                LOG.warning("cannot route %s via %s: %s", subnet, gateway,
                            res.stderr.strip())
        for subnet in sorted(set(ours) - set(wanted)):
            _ip("route", "del", subnet, "proto", self.protocol, check=False)
            changes.append("-%s" % subnet)
        if changes:
            LOG.info("routes to other nodes: %s", ", ".join(changes))
        self.applied, self.checked = wanted, now
        return changes

    def flush(self):
        _ip("route", "flush", "proto", self.protocol, check=False)
        self.applied = None
