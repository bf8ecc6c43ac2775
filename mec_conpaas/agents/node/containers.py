"""Service instances as libvirt LXC domains, the layer nova-compute drives
on real nodes.

Each instance: an overlayfs root (shared read-only base image + its own
upper layer), its bundle in ``/srv/app``, a state directory bind-mounted at
``/var/lib/service`` (kept outside the overlay so migration can copy it from
the host side while the instance is frozen), a veth on the node's bridge
with a static address, and cgroup CPU/memory/pids limits.

Instances are user-namespaced: each gets its own range of host ids
(``[node_agent] idmap_*``), so root inside is an unprivileged uid on the
node that owns nothing but the instance's own files.  The shared base image
is seen through an idmapped mount as owned by that range (no copy); the
upper layer, the state directory and the log live on a per-instance sparse
ext4 image (``disk_mb``) owned by the range, so a full disk is the
instance's problem alone.  Capabilities not needed by the service agent
and ordinary applications are dropped.
"""
import html
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import threading
import time

from mec_conpaas import bundles
from mec_conpaas import exception
from mec_conpaas import safefs
from mec_conpaas.agents.node import cgroups
from mec_conpaas.agents.node import idmap
from mec_conpaas.agents.node import sockdiag

LOG = logging.getLogger(__name__)
PREFIX = "mec-"
SERVICE_AGENT = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                             "service", "agent.py")
APP_PORT = 8080
AGENT_PORT = 8999
# Capabilities an instance keeps (inside its own user namespace): what the
# service agent, init scripts and ordinary daemons use (file ownership,
# switching users, signals, low ports, chroot).  Dropped among others:
# sys_admin (mounts), net_admin and net_raw (netfilter, raw sockets: the
# kernel code most often behind namespace escapes), sys_ptrace, mknod,
# sys_module, sys_time.
CAPABILITIES = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid",
                "setuid", "setpcap", "net_bind_service", "sys_chroot",
                "audit_write")
MEMSW = "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"
# Read once by the service agent at its start, then removed: the app
# (started after) never sees it.  Never in the environment.
AGENT_SECRET_FILE = "etc/mec-conpaas/agent-secret"


def instance_env(spec, address):
    """The service agent's environment: the domain's ``<initenv>`` here, the
    configuration file a nova instance's init reads (agents/node/nova.py)."""
    return {
        "MY_IP": address,
        "MY_ROLE": spec.get("role", "worker"),
        "MASTER_IP": spec.get("master_ip", ""),
        "MEC_SERVICE_TYPE": spec["service_type"],
        "MEC_SERVICE_NAME": spec["service_name"],
        "MEC_INSTANCE_ID": spec["id"],
        # Held: the service agent starts the app only when told to, once
        # the state copied in from the host side is complete.
        "MEC_HOLD": "1" if spec.get("hold") else "",
        "MEC_APP_PORT": str(APP_PORT),
        "MEC_AGENT_PORT": str(AGENT_PORT),
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
    }


def escape(text):
    """XML character data.  ``html`` (loaded by the agent's HTTP server
    anyway), not ``xml.sax.saxutils``, which pulls in urllib.request."""
    return html.escape(text, quote=False)


def quoteattr(value):
    """A double-quoted XML attribute value."""
    return '"%s"' % html.escape(value).replace("\n", "&#10;").replace(
        "\r", "&#13;").replace("\t", "&#9;")


def veth_name(domain_name):
    """The host side of an instance's veth, named in its domain XML so
    that isolation knows it without asking libvirt (15 characters at
    most, the kernel's limit; 13 hex digits of the instance id)."""
    return "mc" + domain_name[len(PREFIX):].replace("-", "")[:13]


def _domain_xml(name, spec, paths, address, prefixlen, gateway, ids, partition=None):
    env = instance_env(spec, address)
    initenv = "".join("<initenv name=%s>%s</initenv>" % (quoteattr(k), escape(v))
                      for k, v in env.items() if v)  # libvirt refuses empty values
    quota = max(1000, int(float(spec["cpus"]) * 100000))
    memory = int(spec["memory_mb"])
    # Without swap accounting (memsw) the memory limit alone applies; with
    # it, an instance may not push its excess out to the node's swap.
    memtune = ("<memtune><swap_hard_limit unit='MiB'>%d</swap_hard_limit></memtune>"
               % memory if os.path.exists(MEMSW) else "")
    caps = "".join("<%s state='on'/>" % c for c in CAPABILITIES)
    uid, gid, count = ids
    # The node's own parent cgroup ([capacity] cgroup_partition): its
    # containers together held to its capacity less reserve.
    resource = "<resource><partition>%s</partition></resource>" % escape(
        partition) if partition else ""
    return f"""<domain type='lxc'>
  <name>{name}</name>
  {resource}
  <memory unit='MiB'>{memory}</memory>
  {memtune}
  <vcpu>1</vcpu>
  <cputune><period>100000</period><quota>{quota}</quota></cputune>
  <features><capabilities policy='deny'>{caps}</capabilities></features>
  <idmap>
    <uid start='0' target='{uid}' count='{count}'/>
    <gid start='0' target='{gid}' count='{count}'/>
  </idmap>
  <os>
    <type>exe</type>
    <init>/usr/bin/python3</init>
    <initarg>/opt/mec-conpaas/agent.py</initarg>
    {initenv}
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <filesystem type='mount'>
      <source dir={quoteattr(paths['rootfs'])}/>
      <target dir='/'/>
    </filesystem>
    <filesystem type='mount'>
      <source dir={quoteattr(paths['state'])}/>
      <target dir='/var/lib/service'/>
    </filesystem>
    <filesystem type='mount'>
      <source dir={quoteattr(os.path.dirname(SERVICE_AGENT))}/>
      <target dir='/opt/mec-conpaas'/>
      <readonly/>
    </filesystem>
    <interface type='bridge'>
      <source bridge={quoteattr(paths['bridge'])}/>
      <target dev={quoteattr(veth_name(name))}/>
      <ip address={quoteattr(address)} family='ipv4' prefix='{prefixlen}'/>
      <route family='ipv4' address='0.0.0.0' prefix='0' gateway={quoteattr(gateway)}/>
    </interface>
    <console type='pty'/>
  </devices>
</domain>"""


class LibvirtContainers:
    # instance id -> its service agent's secret; set by the node agent.
    agent_secret = None
    # agents/node/capacity.Capacity: checked before a container starts or
    # grows (the node's reserve is never given away); set by the node agent.
    capacity = None

    def __init__(self, conf, fetch_bundle):
        self.conf = conf
        self.fetch_bundle = fetch_bundle
        self.root = conf.node_agent.instances_path
        self.bundle_cache = os.path.join(self.root, ".bundles")
        self.network = ipaddress.ip_network(conf.node_agent.instance_network)
        self.gateway = str(next(self.network.hosts()))
        self.lock = threading.Lock()
        opts = conf.node_agent
        last = opts.idmap_start + opts.idmap_slots * opts.idmap_size
        if last > 0xFFFFFFFF:
            raise exception.NodeError(
                "[node_agent] idmap_start + idmap_slots * idmap_size = %d passes the "
                "largest uid (4294967295): lower idmap_start or idmap_slots" % last)
        if 0 < opts.disk_mb < 16:
            raise exception.NodeError(
                "[node_agent] disk_mb = %d is too small for an ext4 image: set it "
                "to 16 or more, or to 0 for no disk limit" % opts.disk_mb)
        os.makedirs(self.bundle_cache, exist_ok=True)
        _open_for_instances(self.root, conf.state_path)

    # -- libvirt -------------------------------------------------------
    # Through virsh, not the libvirt binding: the binding is ~11 MB of the
    # agent's resident memory (bench/footprint.py), and only a container's
    # start and destroy need libvirtd.  Everything else (state, usage,
    # freeze, ports) is read from the cgroups libvirt makes for a domain
    # and from the names its XML sets.
    def virsh(self, *args, what="virsh"):
        _run(["virsh", "-q", "-c", self.conf.node_agent.libvirt_uri] + list(args),
             what)

    def domain_name(self, instance_id):
        """Name of an instance's libvirt domain (its cgroups carry it)."""
        return PREFIX + instance_id

    def _running(self, instance_id):
        """Whether the instance's domain runs: libvirt keeps a freezer
        cgroup for a running LXC domain, and removes it when the domain
        stops (ours are transient: a stopped one is gone)."""
        return bool(_domain_cgroups("freezer", self.domain_name(instance_id)))

    # -- bookkeeping ---------------------------------------------------
    def _paths(self, instance_id):
        base = os.path.join(self.root, instance_id)
        fs = os.path.join(base, "fs")  # the instance's disk image, mounted
        return {"base": base, "fs": fs, "disk": os.path.join(base, "disk.img"),
                "upper": os.path.join(fs, "upper"),
                "work": os.path.join(fs, "work"),
                "state": os.path.join(fs, "state"),
                "lower": os.path.join(base, "lower"),
                "rootfs": os.path.join(base, "rootfs"),
                "meta": os.path.join(base, "meta.json"),
                "bridge": self.conf.node_agent.bridge}

    def _ids(self, slot):
        """(uid, gid, count) of the host range an idmap slot maps to."""
        opts = self.conf.node_agent
        first = opts.idmap_start + slot * opts.idmap_size
        return first, first, opts.idmap_size

    def root_ids(self, instance_id):
        """Host (uid, gid) of root inside the instance: what must own files
        the instance writes (its bundle in /srv/app, its state), and what
        to switch to when handling them on its behalf."""
        meta = self._meta(instance_id)
        if meta is None:
            raise exception.NotFound("no instance %s on this node" % instance_id)
        return self._ids(meta["idmap_slot"])[:2]

    def _meta(self, instance_id):
        try:
            with open(self._paths(instance_id)["meta"]) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _used(self, key):
        used = set()
        for entry in os.listdir(self.root):
            meta = self._meta(entry) if not entry.startswith(".") else None
            if meta and key in meta:
                used.add(meta[key])
        return used

    def _allocate_address(self):
        used = self._used("address") | {self.gateway}
        for host in self.network.hosts():
            if str(host) not in used:
                return str(host)
        raise exception.InsufficientCapacity(
            "node has no free address left in %s" % self.network)

    def _allocate_slot(self):
        """A uid range no other instance on this node uses: one per
        instance, so an instance that escapes its container still owns
        no other tenant's files (they cost nothing more: the base image
        is idmapped, not copied)."""
        used = self._used("idmap_slot")
        for slot in range(self.conf.node_agent.idmap_slots):
            if slot not in used:
                return slot
        raise exception.InsufficientCapacity(
            "node has no free uid range left ([node_agent] idmap_slots = %d)"
            % self.conf.node_agent.idmap_slots)

    # -- operations ----------------------------------------------------
    def list(self):
        out = []
        for entry in sorted(os.listdir(self.root)):
            if entry.startswith("."):
                continue
            meta = self._meta(entry)
            if meta is None:
                continue
            out.append(self.info(entry, meta))
        # Domains whose directory is gone are orphans too.  Running ones
        # are found by their freezer cgroups (as freeze does).
        known = {i["id"] for i in out}
        for name in _running_domains():
            if name[len(PREFIX):] not in known:
                out.append({"id": name[len(PREFIX):], "service_id": None,
                            "state": "ORPHAN", "address": None})
        return out

    def info(self, instance_id, meta=None):
        meta = meta or self._meta(instance_id)
        if meta is None:
            raise exception.NotFound("no instance %s on this node" % instance_id)
        return dict(meta, state=self._state(instance_id))

    def _state(self, instance_id):
        if not self._running(instance_id):
            return "STOPPED"
        # libvirt's suspend of an LXC domain is this same freezer.
        return "FROZEN" if _freezer_state(
            self.domain_name(instance_id)) == "FROZEN" else "RUNNING"

    def create(self, spec):
        instance_id = spec["id"]
        with self.lock:
            if self._meta(instance_id):
                return self.info(instance_id)  # idempotent retry
            # Again at each create (a few stats): a deployment tool may have
            # reset a directory's mode since the agent started.
            _open_for_instances(self.root, self.conf.state_path)
            if self.capacity is not None:
                self.capacity.check(self.sizes(), instance_id, spec["cpus"],
                                    spec["memory_mb"])
            address = self._allocate_address()
            slot = self._allocate_slot()
            paths = self._paths(instance_id)
            os.makedirs(paths["base"], exist_ok=True)
            meta = {"id": instance_id, "service_id": spec["service_id"],
                    "service_name": spec["service_name"],
                    "service_type": spec["service_type"],
                    "address": address, "role": spec.get("role", "worker"),
                    "idmap_slot": slot, "cpus": float(spec["cpus"]),
                    "memory_mb": int(spec["memory_mb"])}
            with open(paths["meta"], "w") as f:
                json.dump(meta, f)
        ids = self._ids(slot)
        try:
            bundle = self.fetch_bundle(spec["bundle_sha256"], self.bundle_cache)
            self._prepare_disk(paths, ids)
            self._mount_root(paths, ids, spec["service_type"])
            app_dir = os.path.join(paths["rootfs"], "srv", "app")
            if os.path.isdir(app_dir):
                shutil.rmtree(app_dir)
            # Owned by the instance's root: the application may write its files.
            bundles.extract(bundle, app_dir,
                            self.conf.manager.max_bundle_size,
                            self.conf.manager.max_bundle_members, owner=ids[:2])
            if self.agent_secret:
                _write_secret(os.path.join(paths["rootfs"], AGENT_SECRET_FILE),
                              self.agent_secret(instance_id), *ids[:2])
            xml = _domain_xml(self.domain_name(instance_id), spec, paths, address,
                              self.network.prefixlen, self.gateway, ids,
                              self.conf.capacity.cgroup_partition)
            _forget_neighbour(address)
            path = os.path.join(paths["base"], "domain.xml")
            with open(path, "w") as f:
                f.write(xml)
            self.virsh("create", path, what="starting the container")
            _limit_pids(self.domain_name(instance_id), self.conf.node_agent.pids_limit)
        except Exception:
            LOG.exception("creating instance %s failed; cleaning up", instance_id)
            self.delete(instance_id)
            raise
        return self.info(instance_id)

    def _prepare_disk(self, paths, ids):
        """The instance's own filesystem for everything it writes (upper
        layer, state, log), owned by its root."""
        size_mb = self.conf.node_agent.disk_mb
        os.makedirs(paths["fs"], exist_ok=True)
        if size_mb and not os.path.ismount(paths["fs"]):
            with open(paths["disk"], "wb") as f:
                f.truncate(size_mb << 20)  # sparse: only what is written costs
            # No blocks reserved for (host) root: the instance is not root.
            # Inode tables and journal are never zeroed (a fresh sparse file
            # reads as zeros already; noinit_itable stops the kernel doing it
            # later): 0.7 MB written instead of 33 MB for 1 GiB, on an SD card.
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E",
                  "lazy_itable_init=1,lazy_journal_init=1,nodiscard", paths["disk"]],
                 "creating the instance's disk image")
            _run(["mount", "-t", "ext4", "-o", "loop,nodev,nosuid,noinit_itable",
                  paths["disk"], paths["fs"]], "mounting the instance's disk image")
        for key in ("upper", "work", "state"):
            os.makedirs(paths[key], exist_ok=True)
        os.chown(paths["upper"], *ids[:2])  # the overlay root's owner
        os.chown(paths["state"], *ids[:2])

    def _mount_root(self, paths, ids, service_type=None):
        if os.path.ismount(paths["rootfs"]):
            return
        os.makedirs(paths["rootfs"], exist_ok=True)
        base = self.conf.node_agent.base_image_path
        if service_type == "flink":
            base = self.conf.node_agent.flink_image_path
        if not os.path.isfile(os.path.join(base, "usr", "bin", "python3")):
            raise exception.NodeError(
                "base image %s is missing or incomplete: build it with "
                "'mec-conpaas-edge build-image'" % base)
        os.makedirs(paths["lower"], exist_ok=True)
        try:
            idmap.mount(base, paths["lower"], *ids)
        except idmap.IdmapError as e:
            raise exception.NodeError(
                "cannot give instances their own uids: %s. User-namespaced "
                "instances need Linux >= 5.19 (idmapped mounts under overlayfs) "
                "and user namespaces enabled (user.max_user_namespaces > 0)" % e)
        try:
            opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (
                paths["lower"], paths["upper"], paths["work"])
            _run(["mount", "-t", "overlay", "overlay", "-o", opts, paths["rootfs"]],
                 "mounting the instance's root")
        finally:
            # overlayfs holds its own private clone of the lower layer.
            _run(["umount", paths["lower"]], "unmounting the idmapped base image")

    def delete(self, instance_id):
        # First thing, before any libvirt call (the manager asks for it
        # sooner still, right after the switch: stop_frozen).
        self.stop_frozen(instance_id)
        if self._running(instance_id):
            try:
                self.virsh("destroy", self.domain_name(instance_id),
                           what="destroying the container")
            except exception.NodeError as e:  # stopped meanwhile: gone
                if self._running(instance_id):
                    LOG.warning("destroying %s: %s", instance_id, e.message)
        paths = self._paths(instance_id)
        meta = self._meta(instance_id)
        if meta:
            _forget_neighbour(meta["address"])
        for key in ("rootfs", "lower", "fs"):  # the loop device goes with fs
            if os.path.ismount(paths[key]):
                if subprocess.run(["umount", paths[key]],
                                  capture_output=True).returncode:
                    subprocess.run(["umount", "-l", paths[key]], check=False)
        _remove_pids_cgroup(self.domain_name(instance_id))
        shutil.rmtree(paths["base"], ignore_errors=True)

    def freeze(self, instance_id, quiesce_port=None, max_wait_ms=None):
        """Freeze (libvirt LXC suspend = the cgroup freezer) at a moment
        when no request is being processed on ``quiesce_port``.

        Requests still unread in socket buffers are fine: they get a reset
        when the frozen instance is killed and the proxy retries them on
        the new instance, where they run exactly once.  A request the
        application has read but not answered is not: its effect could be
        in the copied state and be applied again by the retry.  So after
        each freeze we look at the container's TCP sockets and, if one is
        mid-request, thaw for a few milliseconds and try again.
        """
        name = self.domain_name(instance_id)
        # The freezer cgroup exists exactly while the domain runs: asking
        # libvirt instead cost 20-50 ms of the critical window on a loaded
        # node (a lookup over libvirtd's socket).
        try:
            _freezer_dir(name)
        except exception.NodeError:
            raise exception.NotFound("no running instance %s" % instance_id)
        max_wait_ms = max_wait_ms or QUIESCE_MAX_MS
        deadline = time.monotonic() + max_wait_ms / 1000.0
        attempts = 0
        # Where the freeze's time goes (migration's record): in the
        # freezer's transitions, and in looking for requests in progress.
        took = {"cgroup": 0.0, "check": 0.0}

        def done(quiescent):
            return {"attempts": attempts, "quiescent": quiescent,
                    "ms": {k: round(1000 * v, 1) for k, v in took.items()}}
        while True:
            attempts += 1
            t = time.monotonic()
            _set_freezer(name, "FROZEN")
            took["cgroup"] += time.monotonic() - t
            if quiesce_port is None:
                return done(None)
            t = time.monotonic()
            busy = _requests_in_progress(name, quiesce_port)
            took["check"] += time.monotonic() - t
            if not busy:
                return done(True)
            if time.monotonic() > deadline:
                LOG.warning("%s: %d request(s) still in progress after %d ms; "
                            "freezing anyway", instance_id, busy, max_wait_ms)
                return done(False)
            _set_freezer(name, "THAWED")
            # Long enough for the app to be scheduled and finish what it
            # had read: with 2 ms, on a node with a load of 20, the request
            # in progress seldom moved between two freezes, and the 300 ms
            # limit was reached under a 10 ms open-loop client.
            time.sleep(QUIESCE_THAW_S)

    def stop_frozen(self, instance_id):
        """End a frozen instance that was migrated away (its state is
        copied, the proxies switched).  SIGKILL every task while frozen, so
        that on thaw they die before running another instruction (no late
        write to the copied state, no late answer), and the peers see
        resets at once: the requests the proxies sent it while it was
        frozen were never read, and wait for these resets to be retried on
        the new instance (haproxy.RETRY).  Nothing for an instance that is
        not frozen.  True if it was."""
        name = self.domain_name(instance_id)
        if _freezer_state(name) == "THAWED":
            return False
        _kill_frozen(name)
        _set_freezer(name, "THAWED")
        return True

    def thaw(self, instance_id):
        if not self._running(instance_id):
            raise exception.NotFound("no running instance %s" % instance_id)
        _set_freezer(self.domain_name(instance_id), "THAWED")

    def address(self, instance_id):
        meta = self._meta(instance_id)
        if meta is None:
            raise exception.NotFound("no instance %s on this node" % instance_id)
        return meta["address"]

    def state_dir(self, instance_id):
        if self._meta(instance_id) is None:
            raise exception.NotFound("no instance %s on this node" % instance_id)
        return self._paths(instance_id)["state"]

    def logs(self, instance_id):
        """The end of the app's log, read from the host side.

        The file lies in the tenant's upper layer, so it is opened through
        ``safefs``: an app that replaced it (or ``/var/log``) with a link to
        a host path gets a refusal, never that file."""
        try:
            data = safefs.read_tail(self._paths(instance_id)["upper"],
                                    "var/log/mec-app.log", 65536)
        except safefs.UnsafePath as e:
            raise exception.Conflict(
                "the app's log /var/log/mec-app.log is not shown: %s; the "
                "node reads logs without following links, so keep it a "
                "regular file" % e.why) from None
        except OSError:
            return ""
        return data.decode("utf-8", "replace")

    def usage(self):
        """Per-container cgroup usage, as PiCasso's monitoring agent reports."""
        out = {}
        for entry in os.listdir(self.root):
            if entry.startswith("."):
                continue
            try:
                pid = self._usage_pid(entry)
                if pid is None:
                    continue
                mem = _cgroup_read(pid, "memory", "memory.usage_in_bytes")
                cpu = _cgroup_read(pid, "cpuacct", "cpuacct.usage")
                out[entry] = {"memory_bytes": mem, "cpu_ns": cpu}
            except Exception:  # a container stopping under us
                continue
        return out

    def _usage_pid(self, instance_id):
        """A pid in the instance's cgroups, None if it does not run."""
        pid = _container_pid(self.domain_name(instance_id))
        return int(pid) if pid is not None else None

    def sizes(self):
        """``{instance id: {"cpus", "memory_mb"}}``: each container's size
        as last set (its metadata), else as its cgroups have it."""
        out = {}
        for entry in os.listdir(self.root):
            meta = self._meta(entry) if not entry.startswith(".") else None
            if meta is None:
                continue
            if meta.get("cpus") is not None and meta.get("memory_mb") is not None:
                out[entry] = {"cpus": meta["cpus"], "memory_mb": meta["memory_mb"]}
                continue
            pid = _container_pid(self.domain_name(entry))
            try:
                out[entry] = cgroups.limits(cgroups.dirs(int(pid))) if pid else {}
            except (OSError, exception.NodeError):
                out[entry] = {}
        return out

    def resize(self, instance_id, cpus, memory_mb):
        """Give a running container ``cpus`` cores and ``memory_mb`` MiB,
        live (auto-scaling's grow and shrink), if this node has room."""
        with self.lock:
            meta = self._meta(instance_id)
            if meta is None:
                raise exception.NotFound("no instance %s on this node" % instance_id)
            if self.capacity is not None:
                self.capacity.check(self.sizes(), instance_id, cpus, memory_mb)
            pid = _container_pid(self.domain_name(instance_id))
            if pid is None:
                raise exception.Conflict("instance %s is not running: it cannot "
                                         "be resized" % instance_id)
            d = cgroups.dirs(int(pid))
            cgroups.resize(d, cpus, memory_mb)
            meta.update(cpus=float(cpus), memory_mb=int(memory_mb))
            path = self._paths(instance_id)["meta"]
            with open(path + ".tmp", "w") as f:
                json.dump(meta, f)
            os.replace(path + ".tmp", path)
            return dict(cgroups.limits(d), id=instance_id)

    def ports(self):
        """This node's instance bridge ports, ``{ifname: address}``: what
        each port may send as its source (see isolation)."""
        out = {}
        for entry in os.listdir(self.root):
            meta = self._meta(entry) if not entry.startswith(".") else None
            if meta and self._running(entry):
                out[veth_name(self.domain_name(entry))] = meta["address"]
        return out


def _open_for_instances(path, own_root):
    """Instances' roots sit under ``path`` and libvirt mounts them as the
    instance's root, an unprivileged uid: every directory on the way must
    let others through (x), or containers fail to start with an obscure
    'Permission denied'.  Our own directories (up to ``own_root``, the
    agent's state_path, often 0750) get o+x; others are only checked."""
    path = os.path.abspath(path)
    own_root = os.path.abspath(own_root)
    while True:
        mode = os.stat(path).st_mode
        if not mode & 0o001 and (path + "/").startswith(own_root + "/"):
            os.chmod(path, (mode & 0o7777) | 0o001)
        elif not mode & 0o001:
            raise exception.NodeError(
                "%s is not searchable by other users (mode %o), so instances, "
                "whose root is an unprivileged uid, cannot reach their files under "
                "[node_agent] instances_path: chmod o+x %s" % (
                    path, os.stat(path).st_mode & 0o7777, path))
        if path == "/":
            return
        path = os.path.dirname(path)


def _run(argv, what):
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode:
        raise exception.NodeError("%s failed (%s): %s" % (
            what, " ".join(argv[:2]), (res.stderr or res.stdout).strip()))


def _write_secret(path, secret, uid, gid):
    """Leave the service agent's secret where only the instance's root (a
    host uid of its own range, see root_ids) can read it and, once read,
    remove it: the directory and the file are given to that uid, or the
    agent inside could neither read nor delete what host root wrote."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chown(directory, uid, gid, follow_symlinks=False)
    os.chmod(directory, 0o700)  # whatever the umask
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o400)
    with os.fdopen(fd, "w") as f:
        os.fchown(f.fileno(), uid, gid)
        f.write(secret)


# Migration's freeze waits at most this long for a moment with no request
# in progress (then freezes anyway, with a warning: a request read but not
# answered could then run twice), thawing QUIESCE_THAW_S between tries.
QUIESCE_MAX_MS = 1000
QUIESCE_THAW_S = 0.005

CGROUP_ROOT = "/sys/fs/cgroup"
PIDS_ROOT = "/sys/fs/cgroup/pids/machine"


def _domain_cgroups(controller, domain_name, root=None):
    """A domain's cgroup directories in a (v1) controller, in any of
    libvirt's layouts: its own (``machine/PID-NAME.libvirt-lxc``: no
    systemd-machined, as on the embedded edge), the same under an emulated
    access point's partition (``machine/AP.partition/``, ``[capacity]
    cgroup_partition``), or the one where systemd-machined registers the
    domain (``machine.slice/machine-lxc\\x2dPID\\x2dNAME.scope``, ``-``
    escaped as ``\\x2d``: Debian's libvirt-daemon-system on a systemd host,
    the flashed image).  ``domain_name`` may be a glob (``PREFIX*``).  The
    pids cgroups this module makes take the same leaf names, under
    ``machine/``."""
    import fnmatch
    base = os.path.join(root or CGROUP_ROOT, controller)
    parents = ["machine", "machine.slice"]
    try:
        parents[1:1] = [os.path.join("machine", e)
                        for e in sorted(os.listdir(os.path.join(base, "machine")))
                        if e.endswith(".partition")]
    except OSError:
        pass
    own, scope = "*-%s.libvirt-lxc" % domain_name, "machine-lxc*-%s.scope" % domain_name
    found = []
    for parent in parents:
        try:
            entries = sorted(os.listdir(os.path.join(base, parent)))
        except OSError:
            continue
        found += [os.path.join(base, parent, e) for e in entries
                  if fnmatch.fnmatchcase(e, own) or (
                      e.startswith("machine-lxc")
                      and fnmatch.fnmatchcase(e.replace("\\x2d", "-"), scope))]
    return found


def _domain_of_cgroup(path):
    """The domain name in a cgroup directory's name (either layout)."""
    leaf = os.path.basename(path).replace("\\x2d", "-")
    leaf = leaf[:-len(".libvirt-lxc")] if leaf.endswith(".libvirt-lxc") else leaf[:-len(".scope")]
    return leaf[leaf.index("-" + PREFIX) + 1:]


def _limit_pids(domain_name, limit):
    """Put the instance in a pids cgroup (v1) of its own.

    libvirt's LXC driver manages no pids controller, so the instance is
    moved there just after it starts, while frozen: a process that forks
    at that moment is either stopped before or created inside the cgroup,
    none escapes.
    """
    leaf = os.path.basename(_freezer_dir(domain_name))
    cgroup = os.path.join(PIDS_ROOT, leaf)
    os.makedirs(cgroup, exist_ok=True)
    with open(os.path.join(cgroup, "pids.max"), "w") as f:
        f.write(str(limit))
    _set_freezer(domain_name, "FROZEN")
    try:
        for pid in _container_tasks(domain_name, "cgroup.procs"):
            try:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                    f.write(pid)
            except ProcessLookupError:
                pass
    finally:
        _set_freezer(domain_name, "THAWED")


def _remove_pids_cgroup(domain_name, timeout=5.0):
    deadline = time.monotonic() + timeout
    for cgroup in [c for c in _domain_cgroups("pids", domain_name)
                   if os.path.dirname(c) == PIDS_ROOT]:
        while True:  # killed tasks leave the cgroup as they are reaped
            try:
                os.rmdir(cgroup)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    LOG.warning("pids cgroup %s is still busy; left behind", cgroup)
                    break
                time.sleep(0.05)


def _cgroup_read(pid, controller, name):
    """A value of the (v1) ``controller`` cgroup process ``pid`` is in,
    whichever layout libvirt used (``/proc/PID/cgroup`` says where)."""
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                with open(os.path.join(CGROUP_ROOT, controller, path.lstrip("/"),
                                       name)) as v:
                    return int(v.read().strip())
    return None


def _forget_neighbour(address):
    """Drop the ARP entry of an instance address: a reused address would
    otherwise be sent to the removed veth's MAC until the kernel re-probes
    (seconds), stalling the new instance's first requests."""
    subprocess.run(["ip", "neigh", "flush", "to", address], capture_output=True)


def _freezer_dir(domain_name):
    dirs = _domain_cgroups("freezer", domain_name)
    if not dirs:
        raise exception.NodeError("no freezer cgroup for %s" % domain_name)
    return dirs[0]


def _running_domains():
    """Names of this node's running ``PREFIX`` domains, from the freezer
    cgroups libvirt makes for them (``machine/<machine>-<name>.libvirt-lxc``).

    A domain is this node's when its libvirt_lxc controller, which shares
    the cgroup with the container's tasks, shares this agent's network
    namespace: the embedded edge's access points share one cgroup tree, and
    an agent that listed the others' domains as its orphans had them
    removed by the manager's sweep (test_chaos)."""
    own = os.readlink("/proc/self/ns/net")
    return [_domain_of_cgroup(path) for path in _domain_cgroups("freezer", PREFIX + "*")
            if _has_task_in_netns(path, own)]


def _has_task_in_netns(cgroup_dir, netns):
    try:
        with open(os.path.join(cgroup_dir, "tasks")) as f:
            pids = f.read().split()
    except OSError:
        return False
    for pid in pids:
        try:
            if os.readlink("/proc/%s/ns/net" % pid) == netns:
                return True
        except OSError:
            continue
    return False


def _freezer_state(domain_name):
    try:
        with open(os.path.join(_freezer_dir(domain_name), "freezer.state")) as f:
            return f.read().strip()
    except (exception.NodeError, OSError):
        return "THAWED"


def _set_freezer(domain_name, state, timeout=2.0):
    """The cgroup (v1) freezer directly: libvirt's suspend polls it with a
    back-off that costs tens of milliseconds, inside migration's critical
    window."""
    path = os.path.join(_freezer_dir(domain_name), "freezer.state")
    with open(path, "w") as f:
        f.write(state)
    deadline = time.monotonic() + timeout
    while True:
        with open(path) as f:
            if f.read().strip() == state:
                return
        if time.monotonic() > deadline:
            raise exception.NodeError("%s did not reach %s" % (domain_name, state))
        time.sleep(0.001)


def _container_tasks(domain_name, table="tasks"):
    """The container's own tasks (or processes, with ``cgroup.procs``):
    not libvirt's controller, which shares the cgroup but not the network
    namespace."""
    try:
        with open(os.path.join(_freezer_dir(domain_name), table)) as f:
            pids = f.read().split()
    except (exception.NodeError, OSError):
        return
    own = os.readlink("/proc/self/ns/net")
    for pid in pids:
        try:
            if os.readlink("/proc/%s/ns/net" % pid) != own:
                yield pid
        except OSError:
            continue


def _kill_frozen(domain_name):
    """SIGKILL the container's own tasks."""
    import signal
    for pid in _container_tasks(domain_name):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _container_pid(domain_name):
    """A pid inside the container (not libvirt's controller)."""
    return next(_container_tasks(domain_name), None)


def _requests_in_progress(domain_name, port):
    pid = _container_pid(domain_name)
    return 0 if pid is None else _open_requests(pid, port)


def _open_requests(pid, port):
    """Established connections to ``port`` (in the network namespace of
    ``pid``) whose request was read (receive queue empty) and that the app
    has not closed: being processed, or answered only in part.

    Proxies close server-side connections after each response
    (http-server-close), so an established connection is a request in
    progress, not a kept-alive one, whatever its send queue holds: an app
    that wrote its headers and not yet its body has unacknowledged bytes
    queued (the chaos test froze such an instance and killed it, and the
    client got the headers and no body).
    """
    try:
        return sum(1 for local, rx in sockdiag.established(int(pid))
                   if local == port and rx == 0)
    except OSError as e:  # a kernel without INET_DIAG: the full tables
        LOG.debug("sock_diag for pid %s: %s; reading /proc", pid, e)
    busy = 0
    for table in ("tcp", "tcp6"):
        try:
            with open("/proc/%s/net/%s" % (pid, table)) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            rx = int(fields[4].split(":")[1], 16)  # tx_queue:rx_queue
            if local_port == port and fields[3] == "01" and rx == 0:
                busy += 1
    return busy
