"""Joining nodes: the manager's allocator and join tokens, its TLS, and the
node agent's side (pinning, identity, routes)."""
from oslo_config import cfg

enrollment_group = cfg.OptGroup(
    "enrollment", title="Per-node allocation and join tokens (manager)")

enrollment_opts = [
    cfg.StrOpt("instance_network_pool", default="10.100.0.0/16",
               help="""
Pool the instance networks of joining nodes are cut from.

Node number N gets the N-th subnet of ``instance_network_prefix`` in it (with
the defaults, N = 3 gets 10.100.3.0/24: what the playbooks give an AP whose
client subnet is 10.42.3.0/24).

Possible values:
* an IPv4 network in CIDR notation, larger than ``instance_network_prefix``.

Related options:
* ``instance_network_prefix``, ``client_network_pool``
"""),
    cfg.IntOpt("instance_network_prefix", default=24, min=8, max=30,
               help="Prefix length of one node's instance network (8-30)."),
    cfg.StrOpt("client_network_pool", default="10.42.0.0/16",
               help="""
Pool the Wi-Fi client subnets of joining nodes are cut from; node number N
gets the N-th subnet of ``client_network_prefix`` (10.42.N.0/24 by default).

Possible values:
* an IPv4 network in CIDR notation that does not overlap
  ``instance_network_pool``.
"""),
    cfg.IntOpt("client_network_prefix", default=24, min=8, max=30,
               help="Prefix length of one node's Wi-Fi client subnet (8-30)."),
    cfg.ListOpt("wifi_channels", default=["1", "6", "11"],
                help="""
Wi-Fi channels handed out, least used first (ties: in this order), so that
neighbours differ while the band allows.

Possible values:
* channel numbers: 1, 6, 11 (non-overlapping on 2.4 GHz, the default);
  36, 40, 44, 48 (5 GHz, hw_mode a).
"""),
    cfg.StrOpt("availability_zone_format", default="{name}",
               help="""
Availability zone of a node, from its name and number.

Possible values:
* a Python format string with ``{name}`` and/or ``{number}``: ``{name}``
  (the default, one zone per AP named after it, as the playbooks do) or
  ``az-{number}``.
"""),
    cfg.BoolOpt("manage_routes", default=False,
                help="""
Install, on the master, the routes to every node's instance network and
Wi-Fi client subnet (via the node's address), as the node agents do on the
access points, and remove those of removed nodes.

Possible values:
* false: the master's routes are someone else's (the embedded edge's).
* true: the manager runs as root; routes carry ``[join] route_protocol``
  and a subnet routed by anything else is left alone.
"""),
    cfg.IntOpt("join_token_ttl", default=86400, min=0,
               help="""
Seconds a join token from ``mec-conpaas-manage node-token create`` is valid
when ``--expires-in`` is not given.

Possible values:
* 0: tokens do not expire unless ``--expires-in`` says so.
"""),
]

tls_group = cfg.OptGroup("tls", title="The manager's HTTPS (deployment CA)")

tls_opts = [
    cfg.StrOpt("cert_file",
               help="""
The manager's certificate (PEM), signed by the deployment CA: with it and
``key_file`` the manager serves HTTPS only.

Possible values:
* unset: plain HTTP (the embedded edge on one machine; join tokens then pin
  nothing).
* a path: ``mec-conpaas-manage ca create`` writes it.

Related options:
* ``key_file``, ``ca_file``
"""),
    cfg.StrOpt("key_file", secret=True,
               help="Private key (PEM) of ``cert_file``; readable by the manager only."),
    cfg.StrOpt("ca_file", default="$state_path/tls/ca.pem",
               help="""
The deployment CA's certificate (PEM): its SHA-256 starts every join token,
and it is what nodes and the CLI (``--ca-cert``) trust.
"""),
    cfg.StrOpt("ca_key_file", default="$state_path/tls/ca-key.pem",
               help="""
The deployment CA's private key (PEM), used by ``mec-conpaas-manage ca
create`` only; keep it on the master, readable by root.
"""),
]

join_group = cfg.OptGroup("join", title="How a node agent joins (node side)")

join_opts = [
    cfg.StrOpt("identity",
               help="""
What identifies this node across reboots and re-flashes: the manager keys
its allocation (number, subnets, channel) on it.

Possible values:
* unset: ``serial:`` the Raspberry Pi's serial number (device tree), else
  ``mac:`` the MAC of the first physical network interface.
* any text up to 128 characters (the embedded edge uses ``edge:ap-N``).
"""),
    cfg.StrOpt("manager_ca_file", default="$state_path/manager-ca.pem",
               help="""
The deployment CA this node trusts for an ``https://`` manager_url: written
at join time after its SHA-256 matched the join token's, or put there by the
deployment.
"""),
    cfg.StrOpt("credential_file", default="$state_path/node-credential",
               help="""
This node's own credential, received when it joined (mode 0600): it
registers and heartbeats this node only, and the admin can revoke it.
"""),
    cfg.StrOpt("agent_cert_file", default="$state_path/node-agent-cert.pem",
               help="""
The certificate (chain) this node agent's API serves, issued by the manager
at join (signed by the deployment CA for ``<node id>.node.mec-conpaas``):
with it and ``agent_key_file`` the agent serves HTTPS only, and the manager
and the other node agents check it.

Possible values:
* a path; a missing file (a manager without TLS, a node that joined before
  the manager had it) means plain HTTP.
"""),
    cfg.StrOpt("agent_key_file", default="$state_path/node-agent-key.pem",
               help="Private key of ``agent_cert_file`` (mode 0600, from the join)."),
    cfg.BoolOpt("manage_routes", default=True,
                help="""
Install the routes to the other nodes' instance networks and Wi-Fi client
subnets that the manager sends in each heartbeat answer, and remove those of
nodes that left.

Possible values:
* true: routes carry protocol ``route_protocol``; a subnet routed by anything
  else (a static route) is left alone.
* false: routes are someone else's (the embedded edge's namespaces).
"""),
    cfg.IntOpt("route_protocol", default=201, min=5, max=254,
               help="""
Routing protocol number (``ip route ... proto N``) marking the routes this
agent installs, so that it removes only its own.
"""),
    cfg.StrOpt("networks", default="allocated", choices=[
        ("allocated", "the instance network the manager allocates at join (a "
                      "flashed node)"),
        ("fixed", "[node_agent] instance_network and [join] client_network as "
                  "configured (playbooks, the embedded edge); the manager records "
                  "them so that no joining node gets them")],
               help="Where this node's instance network and client subnet come from."),
    cfg.StrOpt("client_network",
               help="""
This node's Wi-Fi client subnet when it was set by a playbook (CIDR): the
manager records it so that no joining node gets it.

Possible values:
* unset: the node has no fixed client subnet (a joined node gets one).
"""),
    cfg.ListOpt("notices", default=[],
                help="""
Where a refused join is also written, so that the node's owner sees what to
do without a login: each path is overwritten with the manager's reason (a
wrong CA pin, an expired or revoked join token, a node that still holds its
credential); a regular file there is removed once the node joins.

Possible values:
* empty (the default): the log only.
* paths, such as ``/dev/console`` and ``/etc/issue.d/mec-conpaas-join.issue``
  (what a flashed image sets: the serial console and the login screen).
"""),
    cfg.IntOpt("refused_retry_interval", default=60, min=1,
               help="""
Seconds between join attempts after the manager refused one: an admin's
action (approving a re-flashed node with ``node credential revoke``, a new
join token in registration_token) lets a later attempt through.
"""),
    cfg.DictOpt("apply_allocation_to", default={},
                help="""
Files of this access point the allocation it receives at join (and in any
later heartbeat answer) is written into, as ``kind:path`` pairs; the live
Wi-Fi address and bridge follow and hostapd, dnsmasq and cinder-volume are
restarted if they run (agents/node/apconfig.py).

Possible values:
* empty (the default): nothing is written (playbook-deployed APs and the
  embedded edge, whose networks are fixed).
* kinds ``hostapd`` (channel, hw_mode), ``dnsmasq`` (DHCP range, router,
  DNS), ``interface`` (ifupdown stanza of the Wi-Fi interface: its
  address), ``network`` (the mec-conpaas-network script: bridge address and
  MAC), ``cinder`` (storage_availability_zone). A flashed image sets all
  five; a missing file is skipped.

Related options:
* ``networks`` (only ``allocated`` uses it)
"""),
]


def register_opts(conf):
    for group, opts in list_opts().items():
        conf.register_group(group)
        conf.register_opts(opts, group=group)


def list_opts():
    return {enrollment_group: enrollment_opts, tls_group: tls_opts,
            join_group: join_opts}
