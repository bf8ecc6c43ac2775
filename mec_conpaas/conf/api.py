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
]


def register_opts(conf):
    conf.register_group(api_group)
    conf.register_opts(api_opts, group=api_group)


def list_opts():
    return {api_group: api_opts}
