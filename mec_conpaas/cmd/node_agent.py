"""mec-conpaas-node-agent: the agent on every access point."""
import sys

from oslo_config import cfg

from mec_conpaas import conf as conf_mod
from mec_conpaas.cmd import setup_logging

cli_opts = [
    cfg.BoolOpt("write-haproxy-config", default=False,
                help="Write the initial HAProxy configuration and exit "
                     "(ExecStartPre of the HAProxy unit)."),
]


def main(argv=None):
    conf_mod.CONF.register_cli_opts(cli_opts)
    conf = conf_mod.parse_args(sys.argv[1:] if argv is None else argv,
                               prog="mec-conpaas-node-agent")
    setup_logging(conf)
    if conf.write_haproxy_config:
        from mec_conpaas.agents.node import haproxy
        proxy = haproxy.HAProxy(conf)
        if not __import__("os").path.exists(proxy.config_path):
            proxy.write_config({})
        return 0
    from mec_conpaas.agents.node import agent
    agent.NodeAgent(conf).serve()


if __name__ == "__main__":
    sys.exit(main())
