"""mec-conpaas-manage: administration of the manager's store.

  db sync                          upgrade the schema (alembic)
  db version                       print the schema revision
  bootstrap [--admin-token-file F] create the admin tenant and its token
  token create --tenant T --user U [--role member|admin]
  node-token create [--expires-in S] [--uses N] [--description D]
                                   a join token <CA sha256>::<secret> for nodes
  node-token list                  join tokens, their state and uses
  node-token revoke ID             a join token stops working
  ca create [--name N ...]         the deployment CA and the manager's
                                   certificate ([tls] ca_file, cert_file)
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
    ncreate = node_sub.add_parser("create")
    ncreate.add_argument("--expires-in", type=int, default=None, metavar="SECONDS",
                         help="valid this long (default [enrollment] join_token_ttl; "
                              "0: never expires)")
    ncreate.add_argument("--uses", type=int, default=1, metavar="N",
                         help="nodes that may join with it (default 1; 0: any number)")
    ncreate.add_argument("--description")
    node_sub.add_parser("list")
    nrevoke = node_sub.add_parser("revoke")
    nrevoke.add_argument("token_id", help="its id (or the start of it), from list")
    ca = subparsers.add_parser("ca")
    ca_sub = ca.add_subparsers(dest="action")
    ccreate = ca_sub.add_parser("create")
    ccreate.add_argument("--name", dest="names", action="append", default=[],
                         help="host name or address the manager is reached at "
                              "(repeatable; default its host name, bind address, "
                              "localhost)")


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
    if cmd.name == "ca":
        return _ca(conf, cmd)
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
            return _node_token(conf, cmd, s)
    return 0


def _ca(conf, cmd):
    """The deployment CA (made once) and a new certificate for the manager."""
    from mec_conpaas.manager import tls
    if not conf.tls.cert_file or not conf.tls.key_file:
        sys.exit("mec-conpaas-manage: set [tls] cert_file and key_file (where the "
                 "manager's certificate and key go) first")
    made = tls.ensure_ca(conf.tls.ca_file, conf.tls.ca_key_file)
    tls.issue_server_cert(conf.tls.ca_file, conf.tls.ca_key_file, conf.tls.cert_file,
                          conf.tls.key_file, cmd.names or tls.default_names(conf))
    print("CA %s %s (sha256 %s); manager certificate %s for %s" % (
        conf.tls.ca_file, "created" if made else "kept", tls.ca_hash(conf.tls.ca_file),
        conf.tls.cert_file, ", ".join(cmd.names or tls.default_names(conf))))
    return 0


def _node_token(conf, cmd, s):
    from mec_conpaas.manager import join
    from mec_conpaas.manager import tls
    if cmd.action == "create":
        ttl = conf.enrollment.join_token_ttl if cmd.expires_in is None else cmd.expires_in
        if ttl < 0 or cmd.uses < 0:
            sys.exit("mec-conpaas-manage: --expires-in and --uses must be >= 0")
        ca = conf.tls.ca_file if conf.tls.cert_file else None
        pin = tls.ca_hash(ca) if ca and os.path.exists(ca) else None
        _row, secret = join.create_token(s, ttl, cmd.uses, cmd.description)
        print(join.format_token(pin, secret))
    elif cmd.action == "list":
        print("%-36s  %-8s  %-6s  %-20s  %s" % ("id", "state", "uses", "expires_at",
                                                "description"))
        for row in join.list_tokens(s):
            v = join.token_view(row)
            print("%-36s  %-8s  %-6s  %-20s  %s" % (
                v["id"], v["state"], "%d/%s" % (v["uses"], v["max_uses"] or "-"),
                v["expires_at"] or "never", v["description"] or ""))
    elif cmd.action == "revoke":
        from mec_conpaas import exception
        try:
            row = join.revoke_token(s, cmd.token_id)
        except exception.MecError as e:
            sys.exit("mec-conpaas-manage: %s" % e.message)
        print("join token %s revoked" % row.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
