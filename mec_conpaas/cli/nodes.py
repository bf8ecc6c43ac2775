"""node list | show | drain | enable | delete | credential revoke"""
from cliff import lister
from cliff import show

from mec_conpaas.cli import common

COLUMNS = ("name", "state", "schedulable", "address", "instances", "cpu_percent",
           "memory_free_mb", "last_heartbeat")
DRAIN_COLUMNS = ("id", "tenant", "service", "kind", "state", "progress", "step", "error")


def _row(n):
    rep = n.get("report") or {}
    mem = rep.get("memory", {})
    return (n["name"], n["state"], n["schedulable"], n["address"],
            len(rep.get("containers", {})), rep.get("cpu_percent"),
            int(mem["available_bytes"] / 2**20) if mem.get("available_bytes") else None,
            n["last_heartbeat"])


def _show(n):
    rep = n.get("report") or {}
    keys = ("id", "name", "state", "schedulable", "disabled_reason", "address",
            "hostname", "mac", "container_backend", "max_instances", "last_heartbeat",
            "cpu_percent", "load", "memory", "disk", "containers", "allocation", "cloud",
            "settings_warnings")
    vals = (n["id"], n["name"], n["state"], n["schedulable"], n["disabled_reason"],
            n["address"], n["hostname"], n["mac"], n["container_backend"],
            n["max_instances"], n["last_heartbeat"], rep.get("cpu_percent"),
            rep.get("load"), rep.get("memory"), rep.get("disk"), rep.get("containers"),
            n.get("allocation"), n.get("cloud"),
            # One per line; empty: none (or not a flashed node, or not shown to tenants).
            "\n".join(n.get("settings_warnings") or []))
    return keys, vals


class ListNode(common.ApiCommand, lister.Lister):
    """List the access-point nodes, whether they are up and schedulable."""

    def take_action(self, parsed_args):
        return COLUMNS, [_row(n) for n in self.app.client.nodes()]


class ShowNode(common.ApiCommand, show.ShowOne):
    """Show a node with its last resource report."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("node", help="node name or id")
        return parser

    def fetch(self, node):
        return self.app.client.node(node)

    def take_action(self, parsed_args):
        return _show(self.fetch(parsed_args.node))


class DrainNode(common.ApiCommand, lister.Lister):
    """Disable a node and move every instance off it, make-before-break (admin).

    Nothing new is placed on the node until "node enable".  Every service of
    any tenant with instances there gets an operation of its tenant moving
    them to the nearest, least loaded other nodes.  Refused, changing
    nothing, when a service there is busy or the other nodes lack slots.
    Exits 1 when an operation failed (run the drain again to retry).
    """

    failed = False

    def get_parser(self, prog_name):
        parser = common.add_wait_args(super().get_parser(prog_name))
        parser.add_argument("node", help="node name or id")
        parser.add_argument("--reason", help="why, shown with the node and to "
                            "whoever targets it (at most 255 characters)")
        return parser

    def take_action(self, parsed_args):
        res = self.app.client.drain_node(parsed_args.node, parsed_args.reason)
        ops = res["operations"]
        tenants = {o["id"]: o["tenant"] for o in ops}
        self.app.stderr.write("node %s is not schedulable; %d operation(s) moving "
                              "its instances\n" % (res["node"]["name"], len(ops)))
        if res.get("leftovers"):
            self.app.stderr.write("%d instance(s) no operation accounts for, left there "
                                  "for the sweep: %s\n" % (len(res["leftovers"]),
                                                            ", ".join(res["leftovers"])))
        if ops and parsed_args.wait:
            ops = common.wait_all(self.app, ops, parsed_args.timeout)
            failed = [o for o in ops if o["state"] == "FAILED"]
            for o in failed:
                self.app.stderr.write("error: operation %s (%s) failed: %s\n" % (
                    o["id"], o["service"], o["error"]))
            self.failed = bool(failed)
        return DRAIN_COLUMNS, [tuple(tenants[o["id"]] if k == "tenant" else o.get(k)
                                     for k in DRAIN_COLUMNS) for o in ops]

    def run(self, parsed_args):
        status = super().run(parsed_args)
        return 1 if self.failed else status


class EnableNode(ShowNode):
    """Make a disabled (drained) node schedulable again (admin)."""

    def fetch(self, node):
        return self.app.client.enable_node(node)


class DeleteNode(common.ApiCommand, show.ShowOne):
    """Remove a node that left (admin): its allocation (number, subnets,
    channel) is released, its credential revoked, and the other nodes drop
    their routes to it.  Refused while instances run there: drain it first.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("node", help="node name or id")
        return parser

    def take_action(self, parsed_args):
        res = self.app.client.delete_node(parsed_args.node)
        return ("deleted",), (res["deleted"],)


class RevokeNodeCredential(DeleteNode):
    """Revoke a node's own credential (admin): its registrations and
    heartbeats are refused from now on; it must join again with a new join
    token (mec-conpaas-manage node-token create)."""

    def take_action(self, parsed_args):
        res = self.app.client.revoke_node_credential(parsed_args.node)
        return ("node", "revoked"), (res["node"], res["revoked"])
