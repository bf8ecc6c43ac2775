"""operation show | list"""
from cliff import lister
from cliff import show

from mec_conpaas.cli import common


class ShowOperation(common.ApiCommand, show.ShowOne):
    """Show an operation's state, progress and error."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("id")
        return parser

    def take_action(self, parsed_args):
        return common.operation_columns(self.app.client.operation(parsed_args.id))


class ListOperation(common.ApiCommand, lister.Lister):
    """List recent operations."""

    def take_action(self, parsed_args):
        cols = ("id", "kind", "service", "state", "progress", "step")
        # A policy's operation says why it was started (its params' reason).
        return cols + ("reason",), [tuple(o[c] for c in cols) + (
            (o.get("params") or {}).get("reason"),) for o in self.app.client.operations()]
