"""node list | node show"""
from cliff import lister
from cliff import show

from mec_conpaas.cli import common

COLUMNS = ("name", "state", "address", "instances", "cpu_percent", "memory_free_mb",
           "last_heartbeat")


def _row(n):
    rep = n.get("report") or {}
    mem = rep.get("memory", {})
    return (n["name"], n["state"], n["address"], len(rep.get("containers", {})),
            rep.get("cpu_percent"),
            int(mem["available_bytes"] / 2**20) if mem.get("available_bytes") else None,
            n["last_heartbeat"])


class ListNode(common.ApiCommand, lister.Lister):
    """List the access-point nodes and whether they are up."""

    def take_action(self, parsed_args):
        return COLUMNS, [_row(n) for n in self.app.client.nodes()]


class ShowNode(common.ApiCommand, show.ShowOne):
    """Show a node with its last resource report."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("node", help="node name or id")
        return parser

    def take_action(self, parsed_args):
        n = self.app.client.node(parsed_args.node)
        rep = n.get("report") or {}
        keys = ("id", "name", "state", "address", "hostname", "mac",
                "container_backend", "max_instances", "last_heartbeat", "cpu_percent",
                "load", "memory", "disk", "containers")
        vals = (n["id"], n["name"], n["state"], n["address"], n["hostname"], n["mac"],
                n["container_backend"], n["max_instances"], n["last_heartbeat"],
                rep.get("cpu_percent"), rep.get("load"), rep.get("memory"),
                rep.get("disk"), rep.get("containers"))
        return keys, vals
