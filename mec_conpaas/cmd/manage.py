"""mec-conpaas-manage: administration of the manager's store.

  db sync                          upgrade the schema (alembic)
  db version                       print the schema revision
  bootstrap [--admin-token-file F] create the admin tenant and its token
  token create --tenant T --user U [--role member|admin]
  node-token create                a token node agents register with
"""
import os
import sys

from oslo_config import cfg

from mec_conpaas import conf as conf_mod


def add_parsers(subparsers):
    db = subparsers.add_parser("db")
    db_sub = db.add_subparsers(dest="action")
    db_sub.add_parser("sync")
    db_sub.add_parser("version")
    boot = subparsers.add_parser("bootstrap")
    boot.add_argument("--admin-token-file")
    tok = subparsers.add_parser("token")
    tok_sub = tok.add_subparsers(dest="action")
    create = tok_sub.add_parser("create")
    create.add_argument("--tenant", required=True)
    create.add_argument("--user", required=True)
    create.add_argument("--role", default="member", choices=("member", "admin"))
    node = subparsers.add_parser("node-token")
    node_sub = node.add_subparsers(dest="action")
    node_sub.add_parser("create")


command_opt = cfg.SubCommandOpt("command", handler=add_parsers)


def _write_secret(path, secret):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


def main(argv=None):
    conf_mod.CONF.register_cli_opt(command_opt)
    conf = conf_mod.parse_args(sys.argv[1:] if argv is None else argv,
                               prog="mec-conpaas-manage")
    from mec_conpaas.db import session as db
    from mec_conpaas.manager import auth
    cmd = conf.command
    if cmd.name == "db":
        if cmd.action == "sync":
            db.upgrade()
            print("schema at revision %s" % db.current_revision())
        else:
            print(db.current_revision() or "empty")
        return 0
    db.upgrade()
    with db.session_scope() as s:
        if cmd.name == "bootstrap":
            tenant = auth.ensure_tenant(s, "admin")
            secret = auth.issue(s, "admin", "admin", tenant.id)
            if cmd.admin_token_file:
                _write_secret(cmd.admin_token_file, secret)
                print("admin token written to %s" % cmd.admin_token_file)
            else:
                print(secret)
        elif cmd.name == "token":
            tenant = auth.ensure_tenant(s, cmd.tenant)
            print(auth.issue(s, cmd.role, cmd.user, tenant.id))
        elif cmd.name == "node-token":
            print(auth.issue(s, "node", "node-agent"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
