from oslo_config import cfg

node_group = cfg.OptGroup("node_agent", title="Node agent on every access point")

node_opts = [
    cfg.URIOpt("manager_url", default="http://127.0.0.1:9680",
               help="URL of the manager's REST API."),
    cfg.StrOpt("registration_token", secret=True,
               help="""
Token created with ``mec-conpaas-manage node-token create`` that lets this
node register itself with the manager.
"""),
    cfg.StrOpt("node_name",
               help="""
Name of this node (``ap-1``...).

Possible values:
* unset: the host name.
"""),
    cfg.HostAddressOpt("bind_host", default="0.0.0.0",
                       help="Address the node agent's API listens on."),
    cfg.PortOpt("bind_port", default=9681,
                help="TCP port of the node agent's API."),
    cfg.HostAddressOpt("advertise_address",
                       help="""
Address the manager and other nodes use to reach this node.

Possible values:
* unset: the first address of ``bridge``.
"""),
    cfg.IntOpt("heartbeat_interval", default=3, min=1,
               help="Seconds between heartbeats with a resource report."),
    cfg.StrOpt("container_backend", default="libvirt",
               choices=[("libvirt", "libvirt LXC driver on this host"),
                        ("none", "containers are run by nova-compute")],
               help="How this node runs service instances."),
    cfg.StrOpt("libvirt_uri", default="lxc:///system",
               help="libvirt connection URI of the local LXC driver."),
    cfg.StrOpt("bridge", default="mecbr0",
               help="Bridge the instances' veth interfaces are attached to."),
    cfg.BoolOpt("network_isolation", default=True,
                help="""
Keep tenants apart on the network with this node's nftables tables
(``bridge``/``inet mec_isolation``): an instance reaches only its own
service's instances, Wi-Fi users only the access point's endpoints.

Possible values:
* true: needs the ``nftables`` package (libnftables).
* false: no filtering; any instance or Wi-Fi user reaches every instance.

Related options:
* ``client_interfaces``
"""),
    cfg.ListOpt("client_interfaces", default=["wlan0"],
                help="""
Interfaces of this access point's Wi-Fi users (hostapd's interface):
traffic arriving on them may reach the access point's endpoints but no
instance address.

Possible values:
* a list of interface names; empty if the node serves no Wi-Fi users.
"""),
    cfg.StrOpt("instance_network", default="10.240.1.0/24",
               help="""
IPv4 network of the instances on this node; the bridge holds its first
address and instances get the following ones.
"""),
    cfg.IntOpt("max_instances", default=8, min=0,
               help="""
Instances this node accepts; the manager refuses a scale-out beyond the
free slots of all nodes.
"""),
    cfg.StrOpt("instances_path", default="$state_path/instances",
               help="Per-instance overlay layers, bundles and state dirs."),
    cfg.StrOpt("base_image_path", default="$state_path/images/base",
               help="""
Root filesystem tree shared read-only (overlayfs lower layer) by all
instances; built once with ``mec-conpaas-edge build-image``.
"""),
    cfg.StrOpt("haproxy_binary", default="/usr/sbin/haproxy",
               help="HAProxy executable."),
    cfg.StrOpt("haproxy_config", default="$state_path/haproxy/haproxy.cfg",
               help="HAProxy configuration written by the agent."),
    cfg.StrOpt("haproxy_master_socket",
               default="$run_path/haproxy-master.sock",
               help="HAProxy master CLI socket used to reload it."),
    cfg.StrOpt("haproxy_admin_socket", default="$run_path/haproxy-admin.sock",
               help="HAProxy runtime API socket used to switch backends."),
    cfg.IntOpt("proxy_slots", default=8, min=1,
               help="""
Server slots per service and tier (near and far) in each HAProxy backend.

Backends are switched through the runtime API within these slots; more
instances than slots need a (hitless) reload.
"""),
]


def register_opts(conf):
    conf.register_group(node_group)
    conf.register_opts(node_opts, group=node_group)


def list_opts():
    return {node_group: node_opts}
