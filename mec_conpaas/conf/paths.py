from oslo_config import cfg

path_opts = [
    cfg.StrOpt("state_path",
               default="/var/lib/mec-conpaas",
               help="""
Top-level directory for the state of this host's MEC-ConPaaS programs.

Other path options default to places under it, so pointing this one at a
different directory (as the embedded edge and the tests do) moves
everything at once.
"""),
    cfg.StrOpt("run_path",
               default="/run/mec-conpaas",
               help="Directory for sockets and pid files."),
    cfg.BoolOpt("debug", default=False, help="Log at DEBUG level."),
    cfg.StrOpt("log_file", help="Log to this file instead of stderr."),
]


def register_opts(conf):
    conf.register_opts(path_opts)


def list_opts():
    return {"DEFAULT": path_opts}
