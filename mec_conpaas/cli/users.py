"""user list | attach | move | detach (admin)"""
from cliff import lister
from cliff import show

from mec_conpaas.cli import common

COLUMNS = ("name", "ap", "previous", "attached_for_s", "address", "signal", "services")


class ListUser(common.ApiCommand, lister.Lister):
    """List the Wi-Fi users the access points report: where each is, the AP
    before, its signal (hostapd) and the services it used lately (admin)."""

    def take_action(self, parsed_args):
        users = self.app.client.request("GET", "/v1/users")["users"]
        return COLUMNS, [tuple(", ".join(u[c]) if c == "services" else u[c]
                               for c in COLUMNS) for u in users]


class _Move(common.ApiCommand, show.ShowOne):
    action = None

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("name", help="user name")
        if self.action != "detach":
            parser.add_argument("ap", help="access point to attach it to")
        return parser

    def take_action(self, parsed_args):
        body = {"ap": parsed_args.ap} if self.action != "detach" else {}
        out = self.app.client.request("POST", "/v1/users/%s/%s" % (
            parsed_args.name, self.action), json=body)["user"]
        keys = sorted(out)
        return keys, tuple(out[k] for k in keys)


class AttachUser(_Move):
    """Attach an emulated user to an access point (embedded edge; admin).
    The AP's node agent reports it as a station at its next heartbeat."""
    action = "attach"


class MoveUser(_Move):
    """Move an attached emulated user to another access point: a Wi-Fi
    handover (embedded edge; admin)."""
    action = "move"


class DetachUser(_Move):
    """Detach an emulated user from its access point (embedded edge; admin)."""
    action = "detach"
