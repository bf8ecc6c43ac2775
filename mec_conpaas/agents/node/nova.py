"""Instances nova created, on an AP whose ``container_backend`` is ``nova``.

Under the ``openstack`` driver nova-compute creates and deletes every
container; this node agent never defines a domain.  It adopts the domain
nova started (found by the nova instance UUID, which libvirt's LXC driver
uses as the domain UUID) and does what only the AP can:

- hands the instance its configuration by writing into its root
  (``/proc/<pid>/root``: nova unmounts ``<instances>/<uuid>/rootfs`` on
  the host once the container started): the bundle
  in ``/srv/app``, the service agent's secret and ``instance.json``, which
  the image's init (drivers/nova_image.py) waits for.  docs/openstack-
  driver.rst has the measurements that chose this over config drive,
  metadata and file injection;
- gives the instance its neutron port's address from the host side
  (``nsenter`` into its network namespace): the provider network has no
  DHCP and the image carries no network tools;
- freezes, thaws, copies state and reads logs as for its own containers
  (the cgroup freezer of nova's domain, the state directory inside the
  rootfs).

It also keeps the AP's on-link routes on the interface that actually
carries them: neutron's linuxbridge agent enslaves the provider interface
to its ``brq…`` bridge when the first nova server of any kind lands on the
AP, and a route still naming the enslaved interface then loses its replies
(``rehome_routes``, at every heartbeat).
"""
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET

from mec_conpaas import bundles
from mec_conpaas import exception
from mec_conpaas import safefs
from mec_conpaas.agents.node import containers
from mec_conpaas.agents.node import libvirt_binding
from mec_conpaas.drivers import nova_image

LOG = logging.getLogger(__name__)


class NovaContainers(libvirt_binding.BindingDomains, containers.LibvirtContainers):
    """The lxc backend's operations on domains nova owns."""

    def __init__(self, conf, fetch_bundle):
        super().__init__(conf, fetch_bundle)
        self._state_fds = {}

    def domain_name(self, instance_id):
        meta = self._meta(instance_id)
        return meta.get("domain", "") if meta else ""

    def _domain(self, instance_id):
        import libvirt
        meta = self._meta(instance_id)
        if meta is None:
            return None
        try:
            return self.conn().lookupByUUIDString(meta["server_id"])
        except libvirt.libvirtError:
            return None

    def _meta(self, instance_id):
        """Read from its plain path: ``_paths`` here also looks up a task of
        the running domain (a walk of the freezer cgroups and the tasks'
        network namespaces), which the metadata does not need, and
        ``domain_name``, ``root_ids`` and ``address`` read it inside
        migration's frozen window (the freeze, the target's import and
        restore, the source's kill): the lxc backend's took no such walk."""
        try:
            with open(super()._paths(instance_id)["meta"]) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _paths(self, instance_id):
        paths = super()._paths(instance_id)
        try:
            with open(paths["meta"]) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = None
        if meta is not None:
            # The instance's root as its own mount namespace has it: nova
            # unmounts <instances>/<uuid>/rootfs on the host once the
            # container started.  The app's log is read from there (safefs:
            # no link followed); the state directory through state_dir.
            pid = containers._container_pid(meta["domain"])
            # "/.": safefs opens roots without following a link, and
            # /proc/<pid>/root is one (the kernel's, trusted).
            root = "/proc/%s/root/." % pid if pid else os.path.join(paths["base"], "gone")
            paths.update(rootfs=root, upper=root)
        return paths

    def state_dir(self, instance_id):
        """A path to the state directory that no link the tenant makes
        inside its root can redirect: a descriptor of the directory,
        opened once without following links (safefs), and kept."""
        with self.lock:
            fd = self._state_fds.get(instance_id)
            if fd is None:
                root = self._paths(instance_id)["rootfs"]
                try:
                    with safefs.closing(safefs.open_root(root)) as rootfd:
                        fd = safefs.open_dir(rootfd, ["var", "lib", "service"])
                except safefs.UnsafePath as e:
                    raise exception.Conflict(
                        "instance %s's state directory is not used: %s; keep "
                        "/var/lib/service a directory" % (instance_id, e.why)) from None
                except OSError as e:
                    raise exception.NotFound("instance %s has no state directory "
                                             "(%s)" % (instance_id, e)) from None
                self._state_fds[instance_id] = fd
            return "/proc/self/fd/%d/." % fd

    def root_ids(self, instance_id):
        """Host (uid, gid) of the instance's root: nova's ``[libvirt]
        uid_maps``/``gid_maps`` as the domain has them, else 0 (nova without
        id maps runs LXC instances as host root)."""
        meta = self._meta(instance_id)
        if meta is None:
            raise exception.NotFound("no instance %s on this node" % instance_id)
        return meta["root_ids"][0], meta["root_ids"][1]

    def list(self):
        out = []
        for entry in sorted(os.listdir(self.root)):
            meta = self._meta(entry) if not entry.startswith(".") else None
            if meta is not None:
                out.append(self.info(entry, meta))
        return out

    def create(self, spec):
        """Adopt nova's domain of ``spec["server_id"]`` and configure it."""
        instance_id = spec["id"]
        for key in ("server_id", "address", "cidr"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise exception.BadRequest(
                    "a nova instance needs %r (this node's container_backend is "
                    "'nova': the manager's driver must be 'openstack')" % key)
        import libvirt
        t0 = time.monotonic()
        try:
            dom = self.conn().lookupByUUIDString(spec["server_id"])
        except libvirt.libvirtError:
            raise exception.NotFound(
                "nova server %s has no libvirt domain on this node" % spec["server_id"]
            ) from None
        desc = ET.fromstring(dom.XMLDesc(0))
        uid = desc.find("idmap/uid[@start='0']")
        gid = desc.find("idmap/gid[@start='0']")
        ids = (int(uid.get("target")) if uid is not None else 0,
               int(gid.get("target")) if gid is not None else 0)
        with self.lock:
            if self._meta(instance_id):
                return self.info(instance_id)  # idempotent retry
            paths = super()._paths(instance_id)
            os.makedirs(paths["base"], exist_ok=True)
            meta = {"id": instance_id, "service_id": spec["service_id"],
                    "service_name": spec["service_name"],
                    "service_type": spec["service_type"],
                    "address": spec["address"], "role": spec.get("role", "worker"),
                    "server_id": spec["server_id"], "domain": dom.name(),
                    "root_ids": list(ids)}
            with open(paths["meta"], "w") as f:
                json.dump(meta, f)
        paths = self._paths(instance_id)
        try:
            rootfs = paths["rootfs"]
            if not os.path.isdir(os.path.join(rootfs, "etc")):
                raise exception.NodeError(
                    "nova server %s's domain %s has no running root" % (
                        spec["server_id"], dom.name()))
            bundle = self.fetch_bundle(spec["bundle_sha256"], self.bundle_cache)
            secret = self.agent_secret(instance_id) if self.agent_secret else None
            self._unpack(rootfs, bundle, secret, ids)
            self._configure_network(dom.name(), spec)
            self._route_to(spec["cidr"], desc.find("devices/interface/source"))
            # nova's LXC driver sets no pids limit: the domain gets the lxc
            # backend's ([node_agent] pids_limit) while only its init runs, so a
            # fork bomb of the app stops there, not at the AP's pid_max.
            containers._limit_pids(dom.name(), self.conf.node_agent.pids_limit)
            # Last: the image's init starts the service agent once it sees it.
            write_file(rootfs, nova_image.INSTANCE_CONFIG, json.dumps(
                {"env": {k: v for k, v in containers.instance_env(
                    spec, spec["address"]).items() if v}}), ids, mode=0o644)
        except Exception:
            LOG.exception("configuring nova instance %s failed", instance_id)
            shutil.rmtree(paths["base"], ignore_errors=True)
            raise
        LOG.info("configured nova server %s as instance %s in %.2f s",
                 spec["server_id"], instance_id, time.monotonic() - t0)
        return self.info(instance_id)

    def _unpack(self, rootfs, bundle, secret, ids):
        """The bundle in /srv/app, the state directory and the agent's
        secret, written into the instance's root as host root.  Every path
        is walked from a descriptor of the root without following a link
        (safefs), as the lxc backend does: a first adoption writes into a
        tree no tenant code ran in yet, but a re-adoption (the agent lost
        its metadata) writes through one the tenant controlled, where
        ``srv`` or ``etc/mec-conpaas`` may be links to the node's files."""
        try:
            with safefs.closing(safefs.open_root(rootfs)) as rootfd:
                with safefs.closing(safefs.open_dir(rootfd, ["srv"], create=0o755)) as srv:
                    safefs.remove(srv, "app")
                    # /proc/self/fd/N: the kernel's link to the directory just
                    # opened; extract opens "app" itself without following one.
                    bundles.extract(bundle, "/proc/self/fd/%d/app" % srv,
                                    self.conf.manager.max_bundle_size,
                                    self.conf.manager.max_bundle_members, owner=ids)
                with safefs.closing(safefs.open_dir(rootfd, ["var", "lib", "service"],
                                                    create=0o755)) as state:
                    os.fchown(state, *ids)
            if secret:
                write_file(rootfs, containers.AGENT_SECRET_FILE, secret, ids, mode=0o400,
                           dir_mode=0o700)
        except safefs.UnsafePath as e:
            raise exception.Conflict(
                "instance root %s is not configured: %s is a link or not a directory "
                "(%s); nothing was written through it" % (rootfs, e.path, e.why)) from None

    def _configure_network(self, domain_name, spec):
        """The port's address on the instance's NIC, from the host side."""
        pid = containers._container_pid(domain_name)
        if pid is None:
            raise exception.NodeError("nova domain %s has no running task" % domain_name)
        net = ipaddress.ip_network(spec["cidr"])
        out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-o", "link"],
                             capture_output=True, text=True, check=True).stdout
        nics = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                if ": lo:" not in line]
        if not nics:
            raise exception.NodeError("nova domain %s has no NIC" % domain_name)
        route = ["via", spec["gateway"]] if spec.get("gateway") else ["dev", nics[0]]
        for argv in (["addr", "replace", "%s/%d" % (spec["address"], net.prefixlen),
                      "dev", nics[0]],
                     ["link", "set", nics[0], "up"],
                     ["route", "replace", "default"] + route):
            res = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip"] + argv,
                                 capture_output=True, text=True)
            if res.returncode:
                raise exception.NodeError("configuring %s's network (ip %s): %s" % (
                    domain_name, " ".join(argv), res.stderr.strip()))

    def _route_to(self, cidr, source):
        """This AP reaches the instance network on the bridge neutron's
        linuxbridge agent made for it (``brq<network>``, which holds the
        provider interface from now on): an on-link route, sourced from
        the node's backbone address, which the instances reach on the same
        flat network (the AP answers their ARP)."""
        if source is None or not source.get("bridge"):
            return
        argv = ["ip", "route", "replace", cidr, "dev", source.get("bridge")]
        if self.conf.node_agent.advertise_address:
            argv += ["src", self.conf.node_agent.advertise_address]
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode:
            raise exception.NodeError("routing %s to bridge %s: %s" % (
                cidr, source.get("bridge"), res.stderr.strip()))

    def usage(self):
        """Also re-homes enslaved routes (``rehome_routes``): this runs at
        every heartbeat, so a route neutron's agent broke when a server not
        of ours landed here is mended within one heartbeat interval."""
        try:
            rehome_routes()
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            LOG.warning("could not check the routes on bridged interfaces: %s", e)
        remove_empty_pids_cgroups()
        return super().usage()

    def delete(self, instance_id):
        """Forget the instance; nova deletes the server.  A frozen one
        (migrated away) is killed at once, as the lxc backend does, so no
        late write or answer comes from it while nova deletes it."""
        meta = self._meta(instance_id)
        if meta is None:
            return
        name = meta.get("domain", "")
        if self._domain(instance_id) is not None and \
                containers._freezer_state(name) != "THAWED":
            containers._kill_frozen(name)
            containers._set_freezer(name, "THAWED")
        containers._forget_neighbour(meta["address"])
        with self.lock:
            fd = self._state_fds.pop(instance_id, None)
        if fd is not None:
            os.close(fd)
        shutil.rmtree(super()._paths(instance_id)["base"], ignore_errors=True)


def remove_empty_pids_cgroups(root=None):
    """The pids cgroups of nova's domains that are gone.  The agent forgets an
    instance before nova destroys its domain, so the cgroup is still busy
    then; at each heartbeat the empty ones are removed (rmdir refuses a
    cgroup that still has tasks)."""
    import glob
    for cgroup in glob.glob(os.path.join(root or containers.PIDS_ROOT,
                                         "*-instance-*.libvirt-lxc")):
        try:
            os.rmdir(cgroup)
        except OSError:
            pass


def rehome_routes(ip=("ip",)):
    """Move on-link routes whose interface became a bridge port onto the
    bridge; returns the routes moved as (destination, port, bridge).

    A port of a Linux bridge no longer receives for itself: the bridge
    does.  So ``10.232.0.0/24 dev eth1`` (written by mec-conpaas-network,
    or by ``_route_to``) stops working the moment neutron's linuxbridge
    agent makes ``brq…`` and enslaves eth1: requests leave, the replies
    arrive on the bridge, ARP stays INCOMPLETE, the AP's far tier answers
    503.  Only routes without a gateway that are not the kernel's own
    (an address's prefix route goes with its address) are moved, keeping
    their source, protocol, scope and metric.  ``ip``: the command, e.g.
    ``("ip", "-n", netns)`` to act in another network namespace.
    """
    out = subprocess.run(list(ip) + ["-j", "route", "show", "table", "main"],
                         capture_output=True, text=True, check=True).stdout
    moved = []
    for route in json.loads(out or "[]"):
        dev = route.get("dev")
        if not dev or route.get("gateway") or route.get("protocol") == "kernel" \
                or route.get("type", "unicast") != "unicast" or route.get("dst") == "default":
            continue
        bridge = _bridge_of(ip, dev)
        if bridge is None:
            continue
        argv = ["route", "replace", route["dst"], "dev", bridge]
        for key, word in (("prefsrc", "src"), ("protocol", "proto"), ("scope", "scope"),
                          ("metric", "metric")):
            if route.get(key) is not None:
                argv += [word, str(route[key])]
        res = subprocess.run(list(ip) + argv, capture_output=True, text=True)
        if res.returncode:
            LOG.warning("moving route %s from %s to bridge %s: %s", route["dst"], dev,
                        bridge, res.stderr.strip())
            continue
        LOG.info("route %s moved from %s to bridge %s (it became a port of it)",
                 route["dst"], dev, bridge)
        moved.append((route["dst"], dev, bridge))
    return moved


def _bridge_of(ip, dev):
    """The bridge ``dev`` is a port of, or None."""
    out = subprocess.run(list(ip) + ["-j", "-d", "link", "show", "dev", dev],
                         capture_output=True, text=True)
    if out.returncode:
        return None
    links = json.loads(out.stdout or "[]")
    if not links or links[0].get("linkinfo", {}).get("info_slave_kind") != "bridge":
        return None
    return links[0].get("master")


def write_file(root, rel, data, ids, mode=0o600, dir_mode=None):
    """Write ``rel`` below ``root`` atomically and give it (and, with
    ``dir_mode``, its directory) to ``ids``, following no link (safefs):
    a temporary file beside it, renamed over it, so the image's init never
    reads half a file and a link planted at ``rel`` is replaced, not
    followed."""
    parts = safefs.components(rel)
    with safefs.closing(safefs.open_root(root)) as rootfd, \
            safefs.closing(safefs.open_dir(rootfd, parts[:-1],
                                           create=dir_mode or 0o755)) as dirfd:
        if dir_mode is not None:
            os.fchown(dirfd, *ids)
            os.fchmod(dirfd, dir_mode)  # whatever the umask
        tmp = parts[-1] + ".tmp"
        safefs.remove(dirfd, tmp)
        fd = safefs.open_file(dirfd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as f:
            os.fchown(f.fileno(), *ids)
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, parts[-1], src_dir_fd=dirfd, dst_dir_fd=dirfd)
