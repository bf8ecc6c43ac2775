"""The ``openstack`` driver: service instances are nova LXC servers.

As the MEC-ConPaaS paper has it, OpenStack creates the containers on the
access points and the PaaS sits on top.  nova is the only owner of a
container: this driver creates each instance as a nova server in the
availability zone of the node placement chose, on a neutron port of the
instance network, from a raw glance image of the service base image.  The
node agent of that AP then keeps what is local to the AP, on the libvirt
domain nova created (found by the nova instance UUID, which is the
domain's UUID): it writes the instance's configuration, bundle and agent
secret into the rootfs nova mounted, configures its address, and later
freezes, copies state and reads logs as under the ``lxc`` driver (see
``mec_conpaas.agents.node.nova``).  Why the configuration takes that path
and not config drive, metadata or file injection: docs/openstack-driver.rst.

Volumes are not supported: nova's LXC driver cannot attach them.
"""
import dataclasses
import logging
import math
import os
import threading
import time
import types

from mec_conpaas import exception
from mec_conpaas.drivers import lxc
from mec_conpaas.drivers import nova_image

LOG = logging.getLogger(__name__)
SERVER_PREFIX = "mec-"
IMAGE_PREFIX = "mec-conpaas-base-"
KEY_PROPERTY = "mec_conpaas_image_key"
INSTANCE_PROPERTY = "mec_instance_id"


def _free(inventories, usages, rc):
    """What placement still allocates of a resource class."""
    i = inventories.get(rc)
    if i is None:
        return 0
    return int((i.total - i.reserved) * i.allocation_ratio) - usages.get(rc, 0)


def _image_missing(error):
    """nova's words for a glance image that is gone: "Image ... could not be
    found." and, on Debian 12's Zed, "400 Can not find requested image"."""
    message = getattr(error, "message", "") or ""
    return "mage" in message and ("not be found" in message
                                  or "find requested image" in message)


def _is_no_valid_host(fault):
    return "No valid host" in (fault or {}).get("message", "")


class OpenstackDriver(lxc.LxcDriver):
    """Lifecycle through OpenStack; the AP-local data path (freeze, state
    copy, logs) through the node agent, inherited from the lxc driver."""
    name = "openstack"

    def __init__(self, conf=None):
        if conf is None:
            from mec_conpaas.conf import CONF as conf
        super().__init__(conf)
        self._local = threading.local()
        self._image_lock = threading.Lock()
        self._image_id = None
        self._inventory = (None, 0.0)  # (value, time.monotonic() read)

    # -- OpenStack ------------------------------------------------------
    def conn(self):
        """This thread's own OpenStack connection.

        The manager calls the driver from several threads at once (the
        engine's and the cluster reconciler's pools, node-loss handling).
        An ``openstack.connection.Connection`` is not thread-safe (its
        proxies, the keystoneauth session's auth plugin and version
        discovery cache are shared mutable state): one connection per thread
        shares nothing, and the pools' threads live long, so each
        authenticates once.  (The delete that hung on the test bed was
        nova-api's, not this: docs/openstack-driver.rst, "The delete
        hang".)"""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            import openstack
            try:
                kwargs = {"api_timeout": self.conf.openstack.api_timeout}
                if self.conf.openstack.cloud:
                    kwargs["cloud"] = self.conf.openstack.cloud
                conn = self._local.conn = openstack.connect(**kwargs)
            except Exception as e:  # openstack.exceptions.ConfigException & co.
                raise exception.NodeError(
                    "cannot set up the OpenStack connection (%s): set [openstack] "
                    "cloud to a cloud of clouds.yaml, or OS_CLOUD / OS_AUTH_URL & co. "
                    "in the manager's environment" % e) from None
        return conn

    def _os(self, what, call, *args, **kwargs):
        """``conn.<call>(*args, **kwargs)``, e.g. ``"compute.servers"``, its
        failures turned into errors that say what to do.  Named, not passed
        bound: reaching ``conn.compute`` already talks to keystone, and
        listings are generators that fail when iterated; both happen here."""
        from keystoneauth1 import exceptions as ksa
        from openstack import exceptions as sdk
        try:
            target = self.conn()
            for attr in call.split("."):
                target = getattr(target, attr)
            result = target(*args, **kwargs)
            return list(result) if isinstance(result, types.GeneratorType) else result
        except ksa.ConnectionError as e:  # refused, unreachable, or no answer in time
            raise exception.NodeError(
                "%s: OpenStack is unreachable or did not answer within [openstack] "
                "api_timeout = %d s (%s); check that keystone and the service answer "
                "at the endpoints of the [openstack] cloud" % (
                    what, self.conf.openstack.api_timeout, e)) from None
        except ksa.Unauthorized as e:
            raise exception.NodeError(
                "%s: keystone refused the manager's credentials (%s): check the "
                "[openstack] cloud's auth settings" % (what, e)) from None
        except sdk.HttpException as e:
            text = "%s %s" % (e.message, e.details or "")
            if e.status_code in (403, 413) and "uota" in text:
                raise exception.InsufficientCapacity(
                    "%s: the OpenStack project's quota is exhausted (%s): delete "
                    "instances or ask the cloud admin to raise the quota"
                    % (what, text.strip())) from None
            if e.status_code == 404:
                raise exception.NotFound("%s: %s" % (what, text.strip())) from None
            raise exception.NodeError("%s: OpenStack answered %s: %s" % (
                what, e.status_code, text.strip())) from None
        except sdk.SDKException as e:
            raise exception.NodeError("%s: %s" % (what, e)) from None

    def zone(self, node):
        return self.conf.openstack.availability_zone_prefix + node.name

    # -- image and flavor -------------------------------------------------
    def image_id(self):
        """The glance image of the current base image and service agent,
        uploaded once (raw: nova's LXC driver loop-mounts it) and found
        again by its content key."""
        with self._image_lock:
            if self._image_id is not None:
                return self._image_id
            opts = self.conf.openstack
            try:
                key = nova_image.content_key(opts.base_image_path)
            except OSError:
                raise exception.NodeError(
                    "no base service image at [openstack] base_image_path = %s: "
                    "build it (mec_conpaas.edge.image.build) or point the option "
                    "at one" % opts.base_image_path) from None
            name = IMAGE_PREFIX + key[:16]
            found = [i for i in self._os("looking up the base image in glance",
                                           "image.images", name=name)
                     if i.properties.get(KEY_PROPERTY) == key or
                     getattr(i, KEY_PROPERTY, None) == key]
            active = [i for i in found if i.status == "active"]
            if active:
                self._image_id = active[0].id
                return self._image_id
            os.makedirs(opts.image_cache_dir, exist_ok=True)
            path = os.path.join(opts.image_cache_dir, name + ".raw")
            t0 = time.monotonic()
            nova_image.build_raw(opts.base_image_path, path)
            LOG.info("built raw base image %s in %.1f s", path, time.monotonic() - t0)
            try:
                image = self._os("uploading the base image to glance", "create_image", name,
                    filename=path, disk_format="raw", container_format="bare",
                    wait=True, timeout=600, meta={KEY_PROPERTY: key})
            finally:
                os.unlink(path)
            LOG.info("uploaded %s to glance as %s", name, image.id)
            self._image_id = image.id
            return image.id

    def flavor_id(self, memory_mb, cpus):
        """A flavor of the service's size; made (admin) when none exists.
        Its CPU share becomes the domain's CFS quota (nova's
        ``quota:cpu_*`` extra specs), as the lxc driver sets it."""
        vcpus = max(1, math.ceil(cpus))
        name = "%s%dm-%dc-1g" % (self.conf.openstack.flavor_prefix, memory_mb, vcpus)
        if cpus != vcpus:
            name += "-%dq" % int(cpus * 100)
        flavor = self._os("looking up flavor %s" % name, "compute.find_flavor",
                            name, ignore_missing=True)
        if flavor is not None:
            return flavor.id
        try:
            flavor = self._os("creating flavor %s" % name, "compute.create_flavor",
                                name=name, ram=memory_mb, vcpus=vcpus, disk=1,
                                is_public=True)
        except exception.NodeError as e:
            raise exception.NodeError(
                "%s; without the admin role the manager cannot make flavors: have the "
                "cloud admin create flavor %s (%d MB, %d vCPU, 1 GB)" % (
                    e.message, name, memory_mb, vcpus)) from None
        self._os("setting flavor %s's CPU quota" % name,
                   "compute.create_flavor_extra_specs", flavor, {
                       "quota:cpu_period": "100000",
                       "quota:cpu_quota": str(max(1000, int(cpus * 100000)))})
        return flavor.id

    # -- instances ------------------------------------------------------
    def _server(self, instance_id):
        for server in self._os("listing servers", "compute.servers",
                                 name="^%s%s$" % (SERVER_PREFIX, instance_id)):
            return server
        return None

    def _ports(self, instance_id):
        return list(self._os("listing ports", "network.ports",
                               name=SERVER_PREFIX + instance_id))

    def create_instance(self, node, spec):
        server = self._server(spec.id)
        try:
            if server is None:
                image = self.image_id()
                flavor = self.flavor_id(spec.memory_mb, spec.cpus)
                network = self._os("looking up network %s" % self.conf.openstack.network,
                                     "network.find_network",
                                     self.conf.openstack.network, ignore_missing=False)
                ports = self._ports(spec.id)
                port = ports[0] if ports else self._os(
                    "creating the instance's port", "network.create_port",
                    network_id=network.id, name=SERVER_PREFIX + spec.id)
                server = self._create_server(node, spec, image, flavor, port)
            server = self._wait_active(node, spec, server)
            port = self._ports(spec.id)[0]
            ip = port.fixed_ips[0]
            subnet = self._os("looking up the port's subnet", "network.get_subnet",
                                ip["subnet_id"])
            # The node agent adopts the domain nova started (see
            # agents/node/nova.py): configuration, bundle, secret, address.
            info = node.agent.call("POST", "/v1/instances", dict(
                dataclasses.asdict(spec), server_id=server.id, address=ip["ip_address"],
                cidr=subnet.cidr, gateway=subnet.gateway_ip or ""), timeout=180)
        except Exception as e:
            LOG.exception("creating instance %s on %s failed; removing its server "
                          "and port", spec.id, node.name)
            try:
                self._remove(spec.id)
            except exception.MecError as cleanup:  # the first error is the user's
                LOG.error("instance %s's server or port may be left: %s", spec.id,
                          cleanup.message)
            if _image_missing(e):
                # Deleted from glance after nova took the create: the next create
                # uploads it.
                self._forget_image()
                raise exception.NodeError(
                    "the base service image is missing from glance (%s); it is "
                    "uploaded again on the next create: retry" % e.message) from None
            raise
        return dict(info, server_id=server.id, handle=server.id)

    def _create_server(self, node, spec, image, flavor, port):
        """The server; if its glance image was deleted behind the driver's back
        (nova refuses the create), the image is uploaded again and the create
        retried once, so the user's create still succeeds."""
        for attempt in (1, 2):
            try:
                return self._os(
                    "creating the server", "compute.create_server",
                    name=SERVER_PREFIX + spec.id, image_id=image, flavor_id=flavor,
                    networks=[{"port": port.id}], availability_zone=self.zone(node),
                    metadata={INSTANCE_PROPERTY: spec.id, "mec_service_id": spec.service_id})
            except exception.MecError as e:
                if attempt == 2 or not _image_missing(e):
                    raise
                LOG.warning("glance image %s of the base image is gone (%s); uploading "
                            "it again", image, e.message)
                self._forget_image()
                image = self.image_id()

    def _forget_image(self):
        with self._image_lock:
            self._image_id = None

    def _wait_active(self, node, spec, server):
        deadline = time.monotonic() + self.conf.openstack.boot_timeout
        while True:
            server = self._os("waiting for the server", "compute.get_server", server.id)
            if server.status == "ACTIVE":
                return server
            if server.status == "ERROR":
                fault = server.fault or {}
                if _is_no_valid_host(fault):
                    raise exception.InsufficientCapacity(
                        "nova found no room for a %d MB instance on node %s (availability "
                        "zone %s): %s; choose another node, or free memory there"
                        % (spec.memory_mb, node.name, self.zone(node),
                           fault.get("message")))
                raise exception.NodeError("nova could not start the instance on %s: %s" % (
                    node.name, fault.get("message") or "server in ERROR"))
            if time.monotonic() > deadline:
                raise exception.NodeError(
                    "the server of instance %s was not ACTIVE after %d s ([openstack] "
                    "boot_timeout; status %s)" % (spec.id, self.conf.openstack.boot_timeout,
                                                  server.status))
            time.sleep(0.5)

    def _remove(self, instance_id):
        """Delete the server and its ports; wait until the server is gone
        (its port is released only then)."""
        server = self._server(instance_id)
        if server is not None:
            self._os("deleting the server", "compute.delete_server", server,
                       ignore_missing=True)
            self._os("waiting for the server's deletion", "compute.wait_for_delete",
                       server, interval=0.5, wait=self.conf.openstack.delete_timeout)
        for port in self._ports(instance_id):
            self._os("deleting the port", "network.delete_port", port,
                       ignore_missing=True)

    def node_can_host(self, node):
        # Only APs whose node agent adopts nova's domains.
        return node.container_backend == "nova" and node.max_instances > 0

    def delete_instance(self, node, instance_id, handle=None):
        try:
            super().delete_instance(node, instance_id)  # the node agent forgets it
        except exception.NodeError as e:
            LOG.warning("node %s did not forget instance %s: %s", node.name,
                        instance_id, e.message)
        self._remove(instance_id)

    def list_instances(self, node):
        out = []
        for server in self._os("listing servers", "compute.servers",
                                 name="^" + SERVER_PREFIX):
            iid = (server.metadata or {}).get(INSTANCE_PROPERTY)
            if iid and server.availability_zone == self.zone(node):
                out.append({"id": iid,
                            "service_id": server.metadata.get("mec_service_id"),
                            "state": server.status, "server_id": server.id,
                            "handle": server.id})
        return out

    # -- inventory -------------------------------------------------------
    def node_inventory(self):
        """``inventory()``, reused for ``[openstack] inventory_ttl`` seconds:
        placement asks at every decision, and each read is 2 + 2 per host
        API calls."""
        value, at = self._inventory
        if value is not None and time.monotonic() - at < self.conf.openstack.inventory_ttl:
            return value
        try:
            value = self.inventory()
        except exception.MecError as e:
            LOG.warning("cannot read the compute hosts' inventory from nova and "
                        "placement (using the node agents' view): %s", e.message)
            return None
        self._inventory = (value, time.monotonic())
        return value

    def inventory(self):
        """Compute hosts as nova and placement see them: ``{host: {"up",
        "vcpus", "vcpus_free", "vcpus_reserved", "cpu_allocation_ratio",
        "memory_mb", "memory_mb_free", "memory_mb_reserved",
        "ram_allocation_ratio"}}``; free resources are placement's
        (capacity - reserved) * ratio - used, and reserved and the ratios
        are there for the reserve check (manager/inventory.py)."""
        up = {s.host: s.state == "up" and s.status == "enabled"
              for s in self._os("listing compute services", "compute.services")
              if s.binary == "nova-compute"}
        out = {}
        for rp in self._os("listing resource providers",
                             "placement.resource_providers"):
            inv = {i.resource_class: i for i in self._os(
                "reading inventories", "placement.resource_provider_inventories", rp)}
            usages = self._os("reading usages", "placement.get",
                                "/resource_providers/%s/usages" % rp.id).json()["usages"]
            host = rp.name.split(".")[0]

            out[host] = {"up": up.get(host, False)}
            for key, rc, ratio in (("vcpus", "VCPU", "cpu_allocation_ratio"),
                                   ("memory_mb", "MEMORY_MB", "ram_allocation_ratio")):
                i = inv.get(rc)
                out[host].update({key: i.total if i else 0,
                                  key + "_free": _free(inv, usages, rc),
                                  key + "_reserved": i.reserved if i else 0,
                                  ratio: i.allocation_ratio if i else 1.0})
        return out
