from oslo_config import cfg

openstack_group = cfg.OptGroup("openstack", title="The openstack cloud driver")

openstack_opts = [
    cfg.StrOpt("cloud",
               help="""
Cloud in ``clouds.yaml`` the manager uses (as ``openstack --os-cloud``).

Possible values:
* a cloud name from ``/etc/openstack/clouds.yaml`` or
  ``~/.config/openstack/clouds.yaml``;
* unset: ``OS_CLOUD`` or the ``OS_*`` variables of the manager's
  environment, as with the ``openstack`` CLI.

Related options:
* ``[manager] driver`` must be ``openstack`` for this group to be used.
"""),
    cfg.StrOpt("network", default="provider",
               help="""
Neutron network (name or id) every instance gets its port on.  The access
points' HAProxy must reach its addresses (a flat provider network bridged
onto every AP's backbone interface, as the openstack_controller role makes).
"""),
    cfg.StrOpt("availability_zone_prefix", default="",
               help="""
Prefix of the availability zone of each node: an instance placed on node
``ap-1`` is created in zone ``<prefix>ap-1``.

Related options:
* ``openstack_controller_az_prefix`` of the roles, which makes the zones.
"""),
    cfg.StrOpt("base_image_path",
               default="$state_path/images/base",
               help="""
Base service image tree (``mec_conpaas.edge.image.build``;
``mec-conpaas-node-agent --build-base-image`` builds it at the node agent's
``[node_agent] base_image_path``, the same default) the raw glance image is
made from when glance has none for its content key yet.
"""),
    cfg.StrOpt("image_cache_dir", default="$state_path/images",
               help="Where the raw image is written before its upload."),
    cfg.StrOpt("flavor_prefix", default="mec-",
               help="""
Prefix of the flavors the driver makes for a service's size
(``mec-<MB>m-<vCPUs>c-<GB>g``); an existing flavor of exactly that size and
name is reused.  Making one needs the admin role; without it the admin
must create them beforehand.
"""),
    cfg.IntOpt("api_timeout", default=60, min=1,
               help="""
Seconds any one OpenStack API call may take before it fails with an error
naming the call (openstacksdk's ``api_timeout``; its default is to wait
forever).
"""),
    cfg.IntOpt("boot_timeout", default=300, min=10,
               help="Seconds a server may take to become ACTIVE."),
    cfg.IntOpt("delete_timeout", default=120, min=5,
               help="Seconds a server may take to disappear once deleted."),
    cfg.IntOpt("inventory_ttl", default=10, min=0,
               help="""
Seconds the compute hosts' inventory (nova's compute services, placement's
inventories and usages: what ``node list`` and placement use) is reused
before it is read again; 0 reads it at every use. Possible values: 0 or
more; larger values cost fewer API calls and see a changed host later.
"""),
]


def register_opts(conf):
    conf.register_group(openstack_group)
    conf.register_opts(openstack_opts, group=openstack_group)


def list_opts():
    return {openstack_group: openstack_opts}
