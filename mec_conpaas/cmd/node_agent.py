"""mec-conpaas-node-agent: the agent on every access point."""
import os
import sys

from mec_conpaas.agents.node import memory

# stevedore (oslo.config's), ssl and tarfile until something uses them
# (memory.AGENT_DEFERRED says why).
memory.defer_agent_imports()

from oslo_config import cfg  # noqa: E402

from mec_conpaas import conf as conf_mod  # noqa: E402
from mec_conpaas.cmd import setup_logging  # noqa: E402

cli_opts = [
    cfg.BoolOpt("write-haproxy-config", default=False,
                help="Write the initial HAProxy configuration and exit "
                     "(ExecStartPre of the HAProxy unit)."),
    cfg.BoolOpt("build-base-image", default=False,
                help="Build [node_agent] base_image_path with debootstrap if it "
                     "is missing, then exit (a oneshot unit before the agent: "
                     "deployed nodes build it once, from their own Debian "
                     "mirror; http_proxy is honoured)."),
]


def main(argv=None):
    memory.few_malloc_arenas()
    conf_mod.CONF.register_cli_opts(cli_opts)
    conf = conf_mod.parse_args(sys.argv[1:] if argv is None else argv,
                               prog="mec-conpaas-node-agent")
    setup_logging(conf)
    if conf.write_haproxy_config:
        from mec_conpaas.agents.node import haproxy
        proxy = haproxy.HAProxy(conf)
        if not os.path.exists(proxy.config_path):
            proxy.write_config({})
        return 0
    if conf.build_base_image:
        from mec_conpaas.edge import image
        try:
            image.build(conf.node_agent.base_image_path)
        except RuntimeError as e:
            sys.exit("mec-conpaas-node-agent: %s" % e)
        return 0
    from mec_conpaas import exception
    from mec_conpaas.agents.node import agent
    try:
        node = agent.NodeAgent(conf)
    except exception.MecError as e:  # a join token or setting to fix
        sys.exit("mec-conpaas-node-agent: %s" % e.message)
    node.serve()


if __name__ == "__main__":
    sys.exit(main())
