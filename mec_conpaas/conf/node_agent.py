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
                        ("nova", "nova-compute creates the instances ([manager] "
                                 "driver = openstack); the agent configures, "
                                 "freezes and copies state of nova's domains"),
                        ("none", "no instances: the node only proxies")],
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

Nodes that host instances filter: ``container_backend = libvirt`` (its
own containers on ``bridge``) and ``nova`` (nova's instances on neutron's
``brq…`` bridge; ``instance_network`` is then the provider network the
instances' ports are on). ``none`` hosts nothing and filters nothing.

Related options:
* ``client_interfaces``
* ``container_backend``
* ``instance_denied_ports``
"""),
    cfg.ListOpt("instance_denied_ports", item_type=cfg.types.Integer(1, 32767),
                default=[],
                help="""
TCP ports instances may not reach on any address outside the instance
networks, with ``network_isolation``: e.g. the PaaS manager's and the
OpenStack APIs' (9680, 5000, 8774, ...). The node agent's own port is
always refused. Ports up to 32767 only: stateless rules would otherwise also
drop answers to the node's own connections, which come from the ephemeral
range above.

Possible values:
* a list of TCP ports (1-32767); empty: only the node agent's port.
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
address and instances get the following ones. With ``container_backend =
nova``: the neutron provider network the instances' ports are on.
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
    cfg.StrOpt("flink_image_path", default="$state_path/images/flink",
               help="""
Root filesystem tree for instances of ``flink`` services: the base image
plus a Java runtime, Apache Flink and OpenCV (``mec-conpaas-edge
build-image --flink``).  Other service types use ``base_image_path``.
"""),
    cfg.IntOpt("idmap_start", default=1000000000, min=1, max=4294967294,
               help="""
First host uid (and gid) of the ranges instances' user namespaces map to.

Every instance gets its own range of ``idmap_size`` ids from here on: its
root is an unprivileged host uid that owns nothing outside the instance,
and no two instances (of the same or different tenants) share an id.

Possible values:
* a uid above every ordinary account and /etc/subuid range of the node
  (Debian's subordinate ids end at 600100000); the ranges must fit below
  4294967295.

Related options:
* ``idmap_size``, ``idmap_slots``.
"""),
    cfg.IntOpt("idmap_size", default=65536, min=65536,
               help="""
Ids in each instance's user namespace (0 .. size-1 inside).

Possible values:
* 65536 or more: Debian's own accounts go up to 65534 (nobody).
"""),
    cfg.IntOpt("idmap_slots", default=32, min=1,
               help="""
Ranges reserved for this node: instances that can exist at the same time,
including ones being created or deleted during migration.

Possible values:
* at least ``max_instances``; ``idmap_start + idmap_slots * idmap_size``
  must stay below 4294967295.
"""),
    cfg.IntOpt("pids_limit", default=512, min=16,
               help="""
Processes and threads an instance may have at once (cgroup pids
controller): a fork bomb stops there, not at the node's pid_max.

Possible values:
* 16 or more; a threaded web application needs one per concurrent request.
  The default leaves a Pi (pid_max 32768) room for 8 instances and itself.
"""),
    cfg.IntOpt("disk_mb", default=1024, min=0,
               help="""
Disk space (MiB) of an instance's writable layer, state directory and log
together: a sparse ext4 image on a loop device per instance, so a full
instance gets ENOSPC without filling the node's card.

Possible values:
* 0: no limit (plain directories on ``instances_path``; for hosts without
  loop devices);
* otherwise the size in MiB (at least 16); only what is written takes space.
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
    cfg.BoolOpt("proxy_request_log", default=False,
                help="""
Log every request HAProxy forwards (its HTTP log format: the timers Tq, Tw,
Tc, Tr, Ta, the termination state and the queue positions) to HAProxy's
standard output, i.e. the journal of its systemd unit, or the embedded
edge's ``logs/haproxy-AP.log``.  What tells where a slow or failed request
spent its time (client, queue, connect, server).

Possible values:
* false (default): no per-request log (a busy node writes nothing per
  request);
* true: one line per request.
"""),
    cfg.FloatOpt("state_copy_rate_mb", default=8.0, min=0,
                 help="""
MiB/s at most for a migration's bulk copy and pre-copy rounds of a state
directory (the source still serves, over the same backbone as its users'
requests).  Unpaced, a 1 GB copy filled the link: in the embedded edge a
user whose requests crossed it saw every request time out for a minute.
The final delta, with the source frozen, is never paced.

Possible values:
* 0: no limit;
* otherwise MiB/s (e.g. 8: a 1 GB state directory takes about 2 minutes).
"""),
    cfg.IntOpt("proxy_slots", default=8, min=1,
               help="""
Server slots per service and tier (near and far) in each HAProxy backend.

Backends are switched through the runtime API within these slots; more
instances than slots need a (hitless) reload.
"""),
    # -- users (stations) ----------------------------------------------------
    cfg.StrOpt("hostapd_ctrl_interface",
               help="""
hostapd's control socket (``ctrl_interface`` directory plus the interface
name, e.g. ``/run/hostapd/wlan0``), followed for AP-STA-CONNECTED /
AP-STA-DISCONNECTED to report which users are attached.

Possible values:
* unset: no hostapd (no stations reported, unless
  ``emulated_station_bridge`` is set);
* a path: hostapd may start later or restart, the agent reconnects.
"""),
    cfg.StrOpt("emulated_station_bridge",
               help="""
Embedded edge only: the bridge whose ports are emulated Wi-Fi users (set by
``mec-conpaas-edge``; each port's alias names its user).

Related options:
* ``hostapd_ctrl_interface`` wins when both are set.
"""),
    # -- the flashed card's settings file ------------------------------------
    cfg.StrOpt("settings_warnings_file",
               help="""
JSON list of what the card's settings file got wrong without stopping first
boot (an unknown key ignored, a value replaced), written by
``mec-conpaas-firstboot apply``; sent with each registration, so
``mec-conpaas node show`` lists it as ``settings_warnings``.

Possible values:
* unset: no card (a playbook-deployed node): nothing sent;
* a path: set by first boot on a flashed image.
"""),
]


def register_opts(conf):
    conf.register_group(node_group)
    conf.register_opts(node_opts, group=node_group)


def list_opts():
    return {node_group: node_opts}
