from oslo_config import cfg

edge_group = cfg.OptGroup("edge", title="Embedded edge cloud on one machine")

edge_opts = [
    cfg.StrOpt("topology_file",
               help="""
YAML topology of the emulated access points and their links.

Possible values:
* unset: the packaged ``edge-topology.yaml`` (ap-1 - ap-2 - ap-3 in a line,
  2 ms per backbone hop, 5 ms Wi-Fi hop).
"""),
    cfg.StrOpt("netns_prefix", default="mec-",
               help="Prefix of the network namespaces the edge creates."),
    cfg.StrOpt("shaping", default="auto",
               choices=[("auto", "netem if the kernel has it, else nfqueue"),
                        ("netem", "tc netem on every link end"),
                        ("nfqueue", "userspace delay line through NFQUEUE"),
                        ("off", "no latency; said loudly in status")],
               help="How link latency is applied."),
    cfg.PortOpt("manager_port", default=9680,
                help="Port of the manager the edge starts on the master."),
]


def register_opts(conf):
    conf.register_group(edge_group)
    conf.register_opts(edge_opts, group=edge_group)


def list_opts():
    return {edge_group: edge_opts}
