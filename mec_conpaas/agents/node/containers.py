"""Service instances as libvirt LXC domains, the layer nova-compute drives
on real nodes.

Each instance: an overlayfs root (shared read-only base image + its own
upper layer), its bundle in ``/srv/app``, a state directory bind-mounted at
``/var/lib/service`` (kept outside the overlay so migration can copy it from
the host side while the instance is frozen), a veth on the node's bridge
with a static address, and cgroup CPU/memory limits.
"""
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from xml.sax.saxutils import escape
from xml.sax.saxutils import quoteattr

from mec_conpaas import bundles
from mec_conpaas import exception
from mec_conpaas import safefs

LOG = logging.getLogger(__name__)
PREFIX = "mec-"
SERVICE_AGENT = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                             "service", "agent.py")
APP_PORT = 8080
AGENT_PORT = 8999


def _domain_xml(name, spec, paths, address, prefixlen, gateway):
    env = {
        "MY_IP": address,
        "MY_ROLE": spec.get("role", "worker"),
        "MASTER_IP": spec.get("master_ip", ""),
        "MEC_SERVICE_TYPE": spec["service_type"],
        "MEC_SERVICE_NAME": spec["service_name"],
        "MEC_INSTANCE_ID": spec["id"],
        "MEC_APP_PORT": str(APP_PORT),
        "MEC_AGENT_PORT": str(AGENT_PORT),
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
    }
    initenv = "".join("<initenv name=%s>%s</initenv>" % (quoteattr(k), escape(v))
                      for k, v in env.items() if v)  # libvirt refuses empty values
    quota = max(1000, int(float(spec["cpus"]) * 100000))
    return f"""<domain type='lxc'>
  <name>{name}</name>
  <memory unit='MiB'>{int(spec['memory_mb'])}</memory>
  <vcpu>1</vcpu>
  <cputune><period>100000</period><quota>{quota}</quota></cputune>
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
      <ip address={quoteattr(address)} family='ipv4' prefix='{prefixlen}'/>
      <route family='ipv4' address='0.0.0.0' prefix='0' gateway={quoteattr(gateway)}/>
    </interface>
    <console type='pty'/>
  </devices>
</domain>"""


class LibvirtContainers:

    def __init__(self, conf, fetch_bundle):
        self.conf = conf
        self.fetch_bundle = fetch_bundle
        self.root = conf.node_agent.instances_path
        self.bundle_cache = os.path.join(self.root, ".bundles")
        self.network = ipaddress.ip_network(conf.node_agent.instance_network)
        self.gateway = str(next(self.network.hosts()))
        self.lock = threading.Lock()
        self._conn = None
        os.makedirs(self.bundle_cache, exist_ok=True)

    # -- libvirt -------------------------------------------------------
    def conn(self):
        import libvirt  # imported lazily: nodes with backend 'none' skip it
        if self._conn is None or not self._conn.isAlive():
            self._conn = libvirt.open(self.conf.node_agent.libvirt_uri)
        return self._conn

    def _domain(self, instance_id):
        import libvirt
        try:
            return self.conn().lookupByName(PREFIX + instance_id)
        except libvirt.libvirtError:
            return None

    # -- bookkeeping ---------------------------------------------------
    def _paths(self, instance_id):
        base = os.path.join(self.root, instance_id)
        return {"base": base, "upper": os.path.join(base, "upper"),
                "work": os.path.join(base, "work"),
                "rootfs": os.path.join(base, "rootfs"),
                "state": os.path.join(base, "state"),
                "meta": os.path.join(base, "meta.json"),
                "bridge": self.conf.node_agent.bridge}

    def _meta(self, instance_id):
        try:
            with open(self._paths(instance_id)["meta"]) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _used_addresses(self):
        used = set()
        for entry in os.listdir(self.root):
            meta = self._meta(entry) if not entry.startswith(".") else None
            if meta:
                used.add(meta["address"])
        return used

    def _allocate_address(self):
        used = self._used_addresses() | {self.gateway}
        for host in self.network.hosts():
            if str(host) not in used:
                return str(host)
        raise exception.InsufficientCapacity(
            "node has no free address left in %s" % self.network)

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
        # Domains whose directory is gone are orphans too.
        known = {i["id"] for i in out}
        for dom in self.conn().listAllDomains():
            name = dom.name()
            if name.startswith(PREFIX) and name[len(PREFIX):] not in known:
                out.append({"id": name[len(PREFIX):], "service_id": None,
                            "state": "ORPHAN", "address": None})
        return out

    def info(self, instance_id, meta=None):
        meta = meta or self._meta(instance_id)
        if meta is None:
            raise exception.NotFound("no instance %s on this node" % instance_id)
        dom = self._domain(instance_id)
        state = "STOPPED"
        if dom is not None:
            import libvirt
            st = dom.state()[0]
            state = {libvirt.VIR_DOMAIN_RUNNING: "RUNNING",
                     libvirt.VIR_DOMAIN_PAUSED: "FROZEN"}.get(st, "SHUTOFF")
            if state == "RUNNING" and _freezer_state(PREFIX + instance_id) == "FROZEN":
                state = "FROZEN"
        return dict(meta, state=state)

    def create(self, spec):
        instance_id = spec["id"]
        with self.lock:
            if self._meta(instance_id):
                return self.info(instance_id)  # idempotent retry
            address = self._allocate_address()
            paths = self._paths(instance_id)
            for key in ("upper", "work", "rootfs", "state"):
                os.makedirs(paths[key], exist_ok=True)
            meta = {"id": instance_id, "service_id": spec["service_id"],
                    "service_name": spec["service_name"],
                    "service_type": spec["service_type"],
                    "address": address, "role": spec.get("role", "worker")}
            with open(paths["meta"], "w") as f:
                json.dump(meta, f)
        try:
            bundle = self.fetch_bundle(spec["bundle_sha256"], self.bundle_cache)
            self._mount_root(paths)
            app_dir = os.path.join(paths["rootfs"], "srv", "app")
            if os.path.isdir(app_dir):
                shutil.rmtree(app_dir)
            bundles.extract(bundle, app_dir,
                            self.conf.manager.max_bundle_size,
                            self.conf.manager.max_bundle_members)
            xml = _domain_xml(PREFIX + instance_id, spec, paths, address,
                              self.network.prefixlen, self.gateway)
            _forget_neighbour(address)
            self.conn().createXML(xml, 0)
        except Exception:
            LOG.exception("creating instance %s failed; cleaning up", instance_id)
            self.delete(instance_id)
            raise
        return self.info(instance_id)

    def _mount_root(self, paths):
        if os.path.ismount(paths["rootfs"]):
            return
        base = self.conf.node_agent.base_image_path
        if not os.path.isfile(os.path.join(base, "usr", "bin", "python3")):
            raise exception.NodeError(
                "base image %s is missing or incomplete: build it with "
                "'mec-conpaas-edge build-image'" % base)
        opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (
            base, paths["upper"], paths["work"])
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts,
                        paths["rootfs"]], check=True, capture_output=True)

    def delete(self, instance_id):
        dom = self._domain(instance_id)
        if dom is not None:
            import libvirt
            try:
                if _freezer_state(PREFIX + instance_id) != "THAWED":
                    # A frozen instance was migrated away: its state is
                    # copied already.  SIGKILL every task while frozen, so
                    # that on thaw they die before running another
                    # instruction (no late write to the copied state, no
                    # late answer), and the peers see resets at once.
                    _kill_frozen(PREFIX + instance_id)
                    _set_freezer(PREFIX + instance_id, "THAWED")
                dom.destroy()
            except libvirt.libvirtError as e:
                LOG.warning("destroying %s: %s", instance_id, e)
        paths = self._paths(instance_id)
        meta = self._meta(instance_id)
        if meta:
            _forget_neighbour(meta["address"])
        if os.path.ismount(paths["rootfs"]):
            subprocess.run(["umount", "-l", paths["rootfs"]], check=False)
        shutil.rmtree(paths["base"], ignore_errors=True)

    def freeze(self, instance_id, quiesce_port=None, max_wait_ms=300):
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
        if self._domain(instance_id) is None:
            raise exception.NotFound("no running instance %s" % instance_id)
        name = PREFIX + instance_id
        deadline = time.monotonic() + max_wait_ms / 1000.0
        attempts = 0
        while True:
            attempts += 1
            _set_freezer(name, "FROZEN")
            if quiesce_port is None:
                return {"attempts": attempts, "quiescent": None}
            busy = _requests_in_progress(name, quiesce_port)
            if not busy:
                return {"attempts": attempts, "quiescent": True}
            if time.monotonic() > deadline:
                LOG.warning("%s: %d request(s) still in progress after %d ms; "
                            "freezing anyway", instance_id, busy, max_wait_ms)
                return {"attempts": attempts, "quiescent": False}
            _set_freezer(name, "THAWED")
            time.sleep(0.002)

    def thaw(self, instance_id):
        if self._domain(instance_id) is None:
            raise exception.NotFound("no running instance %s" % instance_id)
        _set_freezer(PREFIX + instance_id, "THAWED")

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
            dom = self._domain(entry)
            if dom is None:
                continue
            try:
                pid = dom.ID()
                mem = _cgroup_read(pid, "memory", "memory.usage_in_bytes")
                cpu = _cgroup_read(pid, "cpuacct", "cpuacct.usage")
                out[entry] = {"memory_bytes": mem, "cpu_ns": cpu}
            except Exception:  # a container stopping under us
                continue
        return out


def _cgroup_read(pid, controller, name):
    base = "/sys/fs/cgroup/%s/machine" % controller
    for entry in os.listdir(base):
        if entry.startswith("lxc-%d-" % pid):
            with open(os.path.join(base, entry, name)) as f:
                return int(f.read().strip())
    return None


def _forget_neighbour(address):
    """Drop the ARP entry of an instance address: a reused address would
    otherwise be sent to the removed veth's MAC until the kernel re-probes
    (seconds), stalling the new instance's first requests."""
    subprocess.run(["ip", "neigh", "flush", "to", address], capture_output=True)


def _freezer_dir(domain_name):
    import glob
    dirs = glob.glob("/sys/fs/cgroup/freezer/machine/*-%s.libvirt-lxc" % domain_name)
    if not dirs:
        raise exception.NodeError("no freezer cgroup for %s" % domain_name)
    return dirs[0]


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


def _kill_frozen(domain_name):
    """SIGKILL the container's own tasks (not libvirt's controller, which
    shares the cgroup but not the network namespace)."""
    import signal
    own = os.readlink("/proc/self/ns/net")
    with open(os.path.join(_freezer_dir(domain_name), "tasks")) as f:
        pids = f.read().split()
    for pid in pids:
        try:
            if os.readlink("/proc/%s/ns/net" % pid) != own:
                os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, FileNotFoundError):
            pass


def _container_pid(domain_name):
    """A pid inside the container (not libvirt's controller)."""
    import glob
    own = os.readlink("/proc/self/ns/net")
    for tasks in glob.glob("/sys/fs/cgroup/freezer/machine/*-%s.libvirt-lxc/tasks"
                           % domain_name):
        with open(tasks) as f:
            for pid in f.read().split():
                try:
                    if os.readlink("/proc/%s/ns/net" % pid) != own:
                        return pid
                except OSError:
                    continue
    return None


def _requests_in_progress(domain_name, port):
    """Established connections to ``port`` whose request was read (receive
    queue empty) but not answered (send queue empty): being processed.

    Proxies close server-side connections after each response
    (http-server-close), so an idle established connection is a request in
    progress, not a kept-alive one.
    """
    pid = _container_pid(domain_name)
    if pid is None:
        return 0
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
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            if local_port == port and fields[3] == "01" and rx == 0 and tx == 0:
                busy += 1
    return busy
