from oslo_config import cfg

api_group = cfg.OptGroup("api", title="Manager REST API")

api_opts = [
    cfg.HostAddressOpt("bind_host", default="0.0.0.0",
                       help="Address the manager's REST API listens on."),
    cfg.PortOpt("bind_port", default=9680,
                help="TCP port of the manager's REST API."),
    cfg.IntOpt("threads", default=8, min=1,
               help="""
Request threads of the API server.

Each waiting CLI (``--wait``) polls; a Pi-class master is fine with the
default.
"""),
    cfg.IntOpt("connection_limit", default=2000, min=100,
               help="""
Connections the API server holds open at once (waitress's
``connection_limit``, 100 by default there).  Every node agent keeps one
open between heartbeats, so it must be above the number of nodes: beyond
it, new connections wait unanswered.

Possible values:
* the number of nodes plus clients, with a margin.
"""),
    cfg.BoolOpt("use_poll", default=True,
                help="""
Have the API server wait on its sockets with poll() instead of select():
select() stops the server at file descriptor 1,024 (about a thousand node
agents' connections).

Possible values:
* true: poll();
* false: select(), waitress's default, for up to several hundred nodes.
"""),
    cfg.URIOpt("public_url",
               help="""
URL clients and node agents use to reach the manager.

Possible values:
* unset: derived from ``bind_host`` and ``bind_port``.
"""),
    cfg.BoolOpt("validate_responses", default=False,
                help="""
Check every answer against the API's OpenAPI document (mec_conpaas/api/openapi.yaml).

An answer off the document is logged and replaced by a 500 that says so: for
tests and debugging (requests are always checked).

Possible values:
* false: answers are not checked (production)
* true: answers are checked (see README, "OpenAPI document", for the cost)
"""),
    cfg.StrOpt("auth_strategy", default="token", choices=[
        ("token", "the PaaS's own bearer tokens (mec-conpaas-manage token create)"),
        ("keystone", "keystone tokens, checked by keystonemiddleware")],
               help="""
Who vouches for the people calling the API.

Possible values:
* token: the PaaS's own tokens (the embedded edge's default); tenants are
  created by ``mec-conpaas-manage token create --tenant``
* keystone: keystone tokens (``X-Auth-Token``) validated by keystonemiddleware
  with the ``[keystone_authtoken]`` options; a tenant is the token's keystone
  project. Node agents keep their PaaS node tokens; a person's PaaS token is
  refused.

Related options:
* keystone_admin_role
* [keystone_authtoken], [oslo_policy] policy_file
"""),
    cfg.StrOpt("keystone_admin_role", default="admin",
               help="""
Keystone role that makes a caller a PaaS admin (auth_strategy = keystone).

A token carrying this role (directly or implied) counts as ``role:admin`` in
the policy (mec_conpaas/api/policy.py): drain and enable nodes, force deletes,
list every project's services.

Possible values:
* the name of a keystone role

Related options:
* auth_strategy
"""),
]


def register_opts(conf):
    conf.register_group(api_group)
    conf.register_opts(api_opts, group=api_group)


def list_opts():
    return {api_group: api_opts}
