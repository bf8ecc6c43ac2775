"""service create | list | show | delete | logs | scale | migrate | stop | start"""
from cliff import lister
from cliff import show

from mec_conpaas.cli import common

SHOW_KEYS = ("id", "name", "type", "state", "home_node", "port", "instances",
             "tiers", "error", "operation", "qos")


def _show(svc, op=None):
    # An instance's tier as the home node's proxy uses it; ``tiers`` has
    # every access point's view.
    inst = ", ".join("%s@%s(%s)" % (i["address"], i["node"], ", ".join(
        filter(None, (i["state"].lower(), i.get("role", "worker"), i.get("tier")))))
        for i in svc["instances"])
    return SHOW_KEYS, (svc["id"], svc["name"], svc["type"], svc["state"],
                       svc["home_node"], svc["port"], inst, svc.get("tiers", {}),
                       svc["error"], op["id"] if op else None, svc.get("qos"))


class _Mutating(common.ApiCommand, show.ShowOne):

    def get_parser(self, prog_name):
        return common.add_wait_args(super().get_parser(prog_name))

    def finish(self, parsed_args, result, name):
        op = common.wait_for(self.app, result, parsed_args)
        if not parsed_args.wait:
            return common.operation_columns(op)
        return _show(self.app.client.service(name), op)


class CreateService(_Mutating):
    """Create a service (generic, web or flink) and start its first instance."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("type", choices=("generic", "web", "flink"))
        parser.add_argument("name")
        parser.add_argument("--node", help="access point for the first instance "
                            "(default: chosen by the manager)")
        parser.add_argument("--bundle", help="application .tar.gz (run.sh, init.sh, "
                            "...); web services default to a sample app; flink "
                            "takes its job itself (job.py or a .jar)")
        parser.add_argument("--count", type=int, default=1)
        # The QoS spec (README "Capacity and QoS"); unset: the defaults.
        parser.add_argument("--priority", type=int, help="0-100: higher is "
                            "admitted first and evicted last (default: [qos] "
                            "default_priority, 50)")
        parser.add_argument("--latency-objective-ms", type=float, help="latency "
                            "its users should see: auto-scaling grows a container "
                            "that misses it")
        parser.add_argument("--max-users", type=int, help="users it serves at most")
        parser.add_argument("--min", dest="min_instances", type=int,
                            help="instances it keeps at least (default 1)")
        parser.add_argument("--max", dest="max_instances", type=int,
                            help="instances it may have at most (default: no limit)")
        return parser

    def take_action(self, parsed_args):
        qos = {k: getattr(parsed_args, k) for k in (
            "priority", "latency_objective_ms", "max_users", "min_instances",
            "max_instances") if getattr(parsed_args, k) is not None}
        res = self.app.client.create_service(parsed_args.type, parsed_args.name,
                                             parsed_args.node, parsed_args.bundle,
                                             parsed_args.count, qos=qos)
        return self.finish(parsed_args, res, parsed_args.name)


class ListService(common.ApiCommand, lister.Lister):
    """List your services (admins: --all-tenants, every tenant's)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("--all-tenants", action="store_true",
                            help="every tenant's services, with their tenant "
                            "(admins; the policy rule services:list:all_tenants)")
        return parser

    def take_action(self, parsed_args):
        cols = ("name", "type", "state", "home_node", "port", "instances")
        every = parsed_args.all_tenants
        return cols + (("tenant",) if every else ()), [
            (s["name"], s["type"], s["state"], s["home_node"], s["port"],
             len([i for i in s["instances"] if i["state"] == "ACTIVE"]))
            + ((s.get("tenant"),) if every else ())
            for s in self.app.client.services(all_tenants=every)]


class ShowService(common.ApiCommand, show.ShowOne):
    """Show a service, its endpoint port and its instances."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("name")
        return parser

    def take_action(self, parsed_args):
        return _show(self.app.client.service(parsed_args.name))


class DeleteService(common.ApiCommand, show.ShowOne):
    """Delete a service and all its instances."""

    def get_parser(self, prog_name):
        parser = common.add_wait_args(super().get_parser(prog_name))
        parser.add_argument("name")
        parser.add_argument("--force", action="store_true",
                            help="admin only: forget the instances and proxy "
                            "entries on nodes that do not answer (a node that "
                            "is gone); they are swept if it comes back")
        return parser

    def take_action(self, parsed_args):
        res = self.app.client.delete_service(parsed_args.name, parsed_args.force)
        return common.operation_columns(common.wait_for(self.app, res, parsed_args))


class ServiceLogs(common.ApiCommand, lister.Lister):
    """Show the application logs of every instance."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("name")
        return parser

    def take_action(self, parsed_args):
        return ("instance", "node", "log"), [
            (e["instance"], e["node"], e["log"])
            for e in self.app.client.logs(parsed_args.name)]


class ScaleService(_Mutating):
    """Add or remove instances until the service has COUNT."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("name")
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--node", help="put new instances on this access point "
                            "(default: least loaded among the nearest to the "
                            "service's home)")
        return parser

    def take_action(self, parsed_args):
        res = self.app.client.scale(parsed_args.name, parsed_args.count,
                                    parsed_args.node)
        return self.finish(parsed_args, res, parsed_args.name)


class MigrateService(_Mutating):
    """Move a service to another access point, make-before-break."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("name")
        parser.add_argument("--to", required=True, help="target access point")
        parser.add_argument(
            "--order", choices=("switch-first", "freeze-first"),
            help="the critical window's order (default: the manager's "
                 "[manager] migration_order); apps without restore.sh are "
                 "always freeze-first")
        return parser

    def take_action(self, parsed_args):
        res = self.app.client.migrate(parsed_args.name, parsed_args.to,
                                      parsed_args.order)
        return self.finish(parsed_args, res, parsed_args.name)


class StopService(_Mutating):
    """Stop every instance (cleanup.sh), keeping their state and the port."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("name")
        return parser

    def take_action(self, parsed_args):
        res = self.app.client.stop(parsed_args.name)
        return self.finish(parsed_args, res, parsed_args.name)


class StartService(StopService):
    """Start a stopped service: its instances come back with their state."""

    def take_action(self, parsed_args):
        res = self.app.client.start(parsed_args.name)
        return self.finish(parsed_args, res, parsed_args.name)
