"""``mec-conpaas-edge user ...`` and ``mec-conpaas-edge replay``."""
import json
import sys

from mec_conpaas.edge import traces
from mec_conpaas.edge import users as users_mod


def main(edge, args):
    if not edge.net.existing_netns():
        print("error: no edge with prefix %r is up: 'mec-conpaas-edge up' first"
              % edge.prefix, file=sys.stderr)
        return 1
    users = users_mod.for_edge(edge)
    try:
        if args.command == "replay":
            steps = traces.load(args.trace or traces.DEFAULT, edge.net.aps)
            late = traces.replay(steps, users.attach, users.detach, args.speed,
                                 log=lambda m: print(m, flush=True))
            print(json.dumps({"steps": len(late),
                              "max_late_s": round(max(x for _, x in late), 3)}))
            return 0
        if args.action == "list":
            print(json.dumps(users.list(), indent=2))
            return 0
        if not args.name:
            raise users_mod.UserError("user %s needs a user name" % args.action)
        if args.action in ("attach", "move"):
            if not args.ap:
                raise users_mod.UserError("user %s needs NAME AP" % args.action)
            if args.action == "move" and users.where(args.name) is None:
                raise users_mod.UserError("user %s is not attached: use 'user attach'"
                                          % args.name)
            before, addr = users.attach(args.name, args.ap)
            print("%s: %s -> %s, address %s" % (args.name, before or "(detached)",
                                                 args.ap, addr))
        elif args.action == "detach":
            print("%s: detached from %s" % (args.name, users.detach(args.name)))
        elif args.action == "remove":
            users.remove(args.name)
            print("%s: removed" % args.name)
    except (users_mod.UserError, traces.TraceError, OSError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    return 0
