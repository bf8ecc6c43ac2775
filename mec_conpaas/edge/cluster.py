"""The embedded edge cloud: N emulated access points on one machine.

Per access point: a network namespace (see network), a libvirtd of its
own in a private mount namespace (as each Pi has its own), the node agent
inside that mount namespace (it must see the overlay mounts libvirt
starts containers on), an HAProxy, and the delay line if netem is missing.
The master (manager) runs in the root namespace.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import yaml

from mec_conpaas.agents.node import httpserver
from mec_conpaas.conf import node_agent as node_conf
from mec_conpaas.edge import flink_image
from mec_conpaas.edge import image as image_mod
from mec_conpaas.edge import network as net_mod
from mec_conpaas.edge import partition as partition_mod
from mec_conpaas.edge import shaping
from mec_conpaas.edge import tls as tls_mod
from mec_conpaas.manager import topology as topology_mod

DEFAULT_STATE = "/var/lib/mec-conpaas-edge"
LIBVIRT_DIRS = {"run": "/run/libvirt", "lib": "/var/lib/libvirt",
                "cache": "/var/cache/libvirt", "log": "/var/log/libvirt",
                "etc": "/etc/libvirt"}


class EdgeError(Exception):
    pass


class Edge:

    def __init__(self, state_dir=DEFAULT_STATE, topology_file=None,
                 prefix="mec-", shaping_mode="auto", manager_port=9680,
                 image_dir=image_mod.DEFAULT_DIR, log=print, manager_opts=None,
                 user_credentials=True, node_agent_opts=None, policies_opts=None,
                 tls=None):
        self.state = os.path.abspath(state_dir)
        self.topology_file = os.path.abspath(topology_file or topology_mod.DEFAULT)
        self.topo = topology_mod.load(self.topology_file)
        self.net = net_mod.EdgeNetwork(self.topo, prefix)
        self.prefix = prefix
        self.shaping_mode = shaping_mode
        self.manager_port = manager_port
        self.image_dir = image_dir
        self.flink_image_dir = flink_image.DEFAULT_DIR
        self.log = log
        self.manager_opts = manager_opts or {}
        self.node_agent_opts = node_agent_opts or {}  # e.g. a bench's disk_mb
        # Other groups of the manager's configuration, e.g. {"qos": {...}}.
        self.master_groups = {}
        self.policies_opts = policies_opts or {}  # the manager's [policies]
        self.user_credentials = user_credentials
        self.bin = os.path.dirname(sys.executable)
        # TLS as on a deployment (edge/tls.py): the manager serves HTTPS with a
        # deployment CA, the APs join with a token pinning it, then serve
        # their agent API (and state copies) with the certificate it issued.
        # None: as the state directory says (an edge brought up with TLS).
        self.tls = tls_mod.EdgeTLS(self) if tls or (
            tls is None and tls_mod.EdgeTLS(self).is_on()) else None

    # -- helpers -------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.state, *parts)

    def manager_url(self):
        return "%s://%s:%d" % ("https" if self.tls else "http",
                               self.net.master_address(), self.manager_port)

    def _spawn(self, name, argv, env=None):
        os.makedirs(self.path("logs"), exist_ok=True)
        os.makedirs(self.path("pids"), exist_ok=True)
        log = open(self.path("logs", name + ".log"), "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env=dict(os.environ, **(env or {})))
        with open(self.path("pids", name + ".pid"), "w") as f:
            f.write(str(proc.pid))
        return proc

    def _pid(self, name):
        """Pid of a live process we started, or None (zombies are dead)."""
        try:
            with open(self.path("pids", name + ".pid")) as f:
                pid = int(f.read())
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            except ChildProcessError:
                pass
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return None
            return pid
        except (OSError, ValueError, IndexError):
            return None

    def _wait(self, what, predicate, timeout=60, proc=None, logname=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = ""
        if logname:
            try:
                with open(self.path("logs", logname + ".log"), errors="replace") as f:
                    tail = "".join(f.readlines()[-15:])
            except OSError:
                pass
        raise EdgeError("%s did not come up%s\n%s" % (
            what, " (process exited)" if proc is not None and proc.poll() is not None
            else " within %ds" % timeout, tail))

    def _nsenter(self, ap, mount_pid=None):
        argv = ["nsenter", "--net=/run/netns/" + self.net.netns(ap)]
        if mount_pid:
            argv.append("--mount=/proc/%d/ns/mnt" % mount_pid)
        return argv + ["--"]

    def _tool(self, name):
        return os.path.join(self.bin, name)

    # -- checks --------------------------------------------------------------
    def preflight(self):
        if os.geteuid() != 0:
            raise EdgeError("the embedded edge needs root (namespaces, libvirt, "
                            "iptables): run it with sudo")
        missing = [t for t in ("ip", "nsenter", "unshare", "libvirtd", "haproxy",
                               "iptables", "tc", "debootstrap")
                   if shutil.which(t) is None]
        if missing:
            raise EdgeError("missing tools: %s; install them with tools/install-deps.sh"
                            % ", ".join(missing))
        if self.net.existing_netns():
            raise EdgeError("an edge with prefix %r is already up (%s); run "
                            "'mec-conpaas-edge --prefix %s --state-dir DIR down' first, "
                            "DIR being that edge's state directory (a test or "
                            "benchmark edge's is a /tmp/mec-edge-* or /tmp/mec-bench-* "
                            "directory)" % (
                                self.prefix, ", ".join(self.net.existing_netns()),
                                self.prefix))
        # libvirt's qemu driver (a dependency of libvirt-daemon) will not
        # start without its user; libvirt-daemon-system normally adds it.
        if subprocess.run(["getent", "group", "libvirt-qemu"],
                          capture_output=True).returncode:
            subprocess.run(["groupadd", "--system", "libvirt-qemu"], check=True)
        if subprocess.run(["getent", "passwd", "libvirt-qemu"],
                          capture_output=True).returncode:
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir",
                            "/var/lib/libvirt", "--shell", "/usr/sbin/nologin",
                            "-g", "libvirt-qemu", "libvirt-qemu"], check=True)

    # -- up ------------------------------------------------------------------
    def up(self):
        self.preflight()
        t0 = time.monotonic()
        image_mod.build(self.image_dir, log=self.log)
        os.makedirs(self.state, exist_ok=True)
        # Instances' roots (unprivileged uids) reach their files through it.
        os.chmod(self.state, os.stat(self.state).st_mode | 0o001)
        self.log("creating %d access points and their links..." % len(self.net.aps))
        try:
            self.net.create()
            method = self._shape()
            self._start_master()
            for ap in self.net.aps:
                self._start_ap(ap)
            self._wait_nodes()
        except BaseException:
            self.log("bringing the edge up failed; tearing down what was started")
            self.down(quiet=True)
            raise
        status = self.status()
        status["shaping_method"] = method
        self.log("edge up in %.1f s" % (time.monotonic() - t0))
        return status

    def _shape(self):
        wifi = float(self.topo.get("wifi_latency_ms", 0))
        mode = self.shaping_mode
        if mode == "auto":
            mode = "netem" if shaping.netem_available(self.net) else "nfqueue"
        if mode == "netem":
            shaping.apply_netem(self.net, wifi)
        elif mode == "nfqueue":
            for ap, (queues, rules) in shaping.nfqueue_plan(self.net, wifi).items():
                args = []
                for q, ms in queues.items():
                    args += ["--queue", "%d:%g" % (q, ms)]
                self._spawn("linkd-" + ap, self._nsenter(ap) + [
                    sys.executable, "-m", "mec_conpaas.cmd.linkd",
                    "--status-file", self.path("linkd-%s.json" % ap)] + args)
                self._wait("delay line of " + ap,
                           lambda ap=ap: os.path.exists(self.path("linkd-%s.json" % ap)),
                           timeout=20, logname="linkd-" + ap)
                shaping.install_nfqueue_rules(self.net, ap, rules)
        else:
            self.log("WARNING: latency shaping is OFF: links carry no latency")
        with open(self.path("shaping"), "w") as f:
            f.write(mode)
        return mode

    def _write_conf(self, path, sections):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            for section, opts in sections.items():
                f.write("[%s]\n" % section)
                for k, v in opts.items():
                    f.write("%s = %s\n" % (k, v))
                f.write("\n")

    def _write_master_conf(self):
        conf = self.path("master", "mec-conpaas.conf")
        self._write_conf(conf, {
            "DEFAULT": {"state_path": self.path("master"),
                        "run_path": self.path("master", "run")},
            "api": {"bind_host": self.net.master_address(),
                    "bind_port": self.manager_port},
            "manager": dict({"topology_file": self.topology_file, "drain_timeout": 1,
                             "node_heartbeat_timeout": 10}, **self.manager_opts),
            **self.master_groups,
            **(self.tls.master_groups() if self.tls else {}),
            "policies": self.policies_opts,
        })
        return conf

    def _start_master(self):
        conf = self._write_master_conf()
        manage = [self._tool("mec-conpaas-manage"), "--config-file", conf]
        subprocess.run(manage + ["db", "sync"], check=True, capture_output=True)
        if not os.path.exists(self.path("admin-token")):
            subprocess.run(manage + ["bootstrap", "--admin-token-file",
                                     self.path("admin-token")],
                           check=True, capture_output=True)
        if self.tls:
            self.tls.create_ca(manage)  # before the join token, which pins it
        if not os.path.exists(self.path("node-token")):
            # One join token for the edge's own APs, any number of joins (an
            # AP re-joins when its credential is revoked), no expiry.
            tok = subprocess.run(manage + ["node-token", "create", "--uses", "0",
                                           "--expires-in", "0",
                                           "--description", "embedded edge APs"],
                                 check=True,
                                 capture_output=True, text=True).stdout.strip()
            with open(self.path("node-token"), "w") as f:
                f.write(tok)
        self.start_manager()
        self._write_credentials()

    def start_manager(self):
        conf = self.path("master", "mec-conpaas.conf")
        proc = self._spawn("manager", [self._tool("mec-conpaas-manager"),
                                       "--config-file", conf])
        if not self.net.routed_locally(self.net.master_address()):
            raise EdgeError("the master address %s is not on this edge's link"
                            % self.net.master_address())
        # Ready when it answers HTTP (its OpenAPI document needs no token): a
        # TCP connect alone was once accepted right after a restart while the
        # new manager had not started serving, and the next request was reset.
        self._wait("manager API", self._manager_answers, timeout=60, proc=proc,
                   logname="manager")
        return proc

    def manager_tls(self):
        """The client TLS context for the manager (None: plain HTTP)."""
        return self.tls.client_context() if self.tls else None

    def _manager_answers(self):
        import urllib.request
        try:
            with urllib.request.urlopen(self.manager_url() + "/v1/openapi.json",
                                        timeout=2, context=self.manager_tls()) as resp:
                return resp.status == 200
        except OSError:
            return False

    def restart_manager(self, policies=None, **manager_opts):
        """SIGKILL the manager (nothing is flushed), update its ``[manager]``
        options (and ``[policies]``, replaced by ``policies`` if given),
        start it again."""
        self.kill("manager", signal.SIGKILL)
        self._wait("manager stopped", lambda: not self._pid("manager"), timeout=10)
        self.manager_opts.update(manager_opts)
        if policies is not None:
            self.policies_opts = dict(policies)
        self._write_master_conf()
        return self.start_manager()

    def _write_credentials(self):
        creds = {"url": self.manager_url(),
                 "token": open(self.path("admin-token")).read().strip()}
        if self.tls:
            creds["ca_cert"] = self.tls.ca_file
        with open(self.path("credentials.yaml"), "w") as f:
            yaml.safe_dump(creds, f)
        if not self.user_credentials:
            return
        home = os.path.expanduser("~/.config/mec-conpaas")
        os.makedirs(home, exist_ok=True)
        fd = os.open(os.path.join(home, "credentials.yaml"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(creds, f)

    def _start_ap(self, ap):
        spec = self.topo["nodes"][ap]
        base = self.path("nodes", ap)
        for d in LIBVIRT_DIRS:
            os.makedirs(os.path.join(base, "libvirt", d), exist_ok=True)
        etc = os.path.join(base, "libvirt", "etc")
        if not os.path.exists(os.path.join(etc, "libvirtd.conf")):
            shutil.rmtree(etc)
            shutil.copytree("/etc/libvirt", etc)
        script = ["set -e", "mount --make-rslave /",
                  "umount /sys/fs/cgroup/unified 2>/dev/null || true"]
        for d, target in LIBVIRT_DIRS.items():
            script.append("mkdir -p %s && mount --bind %s %s" % (
                target, os.path.join(base, "libvirt", d), target))
        script.append("exec libvirtd -p %s" % os.path.join(base, "libvirt", "run", "libvirtd.pid"))
        proc = self._spawn("libvirtd-" + ap, self._nsenter(ap) + [
            "unshare", "-m", "--propagation", "slave", "sh", "-c", "\n".join(script)])
        sock = os.path.join(base, "libvirt", "run", "libvirt-sock")
        self._wait("libvirtd of " + ap, lambda: os.path.exists(sock), timeout=30,
                   proc=proc, logname="libvirtd-" + ap)
        # The pid we hold is unshare's, which exec'd sh then libvirtd: same pid.
        libvirtd_pid = proc.pid
        cap = topology_mod.capacity(spec)
        self._partition(ap, cap)
        conf = os.path.join(base, "mec-conpaas.conf")
        self._write_conf(conf, {
            "DEFAULT": {"state_path": base, "run_path": os.path.join(base, "run")},
            "node_agent": {
                "manager_url": self.manager_url(),
                "registration_token": open(self.path("node-token")).read().strip(),
                "node_name": ap, "bind_host": "0.0.0.0",
                "advertise_address": self.net.bridge_address(ap),
                "bridge": net_mod.BRIDGE,
                "client_interfaces": net_mod.WIFI_AP_IF,
                "emulated_station_bridge": net_mod.WIFI_AP_IF,
                "instance_network": spec["instance_network"],
                "max_instances": spec.get("max_instances", 8),
                "base_image_path": self.image_dir, "heartbeat_interval": 2,
                "flink_image_path": self.flink_image_dir,
                "idmap_start": self._idmap_start(ap),
                # Where a request that failed or waited spent its time.
                "proxy_request_log": "true", **self.node_agent_opts},
            # Joins with the node token; its networks are the topology's
            # (recorded by the allocator), routes to nodes that join later
            # come from the manager (edge/network.py routes the topology's).
            "join": dict({"identity": "edge:" + ap, "networks": "fixed",
                          "manage_routes": "true"},
                         # A cloud node has no Wi-Fi side.
                         **({"client_network": spec["client_network"]}
                            if spec.get("client_network") else {})),
            "capacity": dict(cap, cgroup_partition=partition_mod.name(self.prefix, ap)),
        })
        subprocess.run([self._tool("mec-conpaas-node-agent"), "--config-file", conf,
                        "--write-haproxy-config"], check=True, capture_output=True)
        hconf = os.path.join(base, "haproxy", "haproxy.cfg")
        master_sock = os.path.join(base, "run", "haproxy-master.sock")
        proc = self._spawn("haproxy-" + ap, self._nsenter(ap) + [
            "haproxy", "-W", "-f", hconf, "-S", master_sock])
        self._wait("haproxy of " + ap, lambda: os.path.exists(
            os.path.join(base, "run", "haproxy-admin.sock")), timeout=20, proc=proc,
            logname="haproxy-" + ap)
        self.start_node_agent(ap, libvirtd_pid)

    def set_capacity(self, ap, **capacity):
        """Give an access point another capacity (``[capacity]`` options;
        the others keep the topology's) and restart its node agent, which
        reports it at its next heartbeat; its containers keep running."""
        conf = self.path("nodes", ap, "mec-conpaas.conf")
        with open(conf) as f:
            text = f.read()
        # The [capacity] section is the file's last (see _start_ap).
        text = text.split("[capacity]\n")[0]
        values = dict(topology_mod.capacity(self.topo["nodes"][ap]), **capacity)
        self._partition(ap, values)
        values["cgroup_partition"] = partition_mod.name(self.prefix, ap)
        with open(conf, "w") as f:
            f.write(text + "[capacity]\n" + "".join(
                "%s = %s\n" % kv for kv in values.items()))
        self.kill("agent-" + ap)
        self._wait("node agent of %s stopped" % ap, lambda: not self._pid("agent-" + ap),
                   timeout=20)
        return self.start_node_agent(ap)

    def _partition(self, ap, cap):
        """The access point's parent cgroup (edge/partition.py) with its
        capacity less reserve, before any of its containers starts; where
        it is is kept for ``down``."""
        made = partition_mod.create(partition_mod.name(self.prefix, ap), cap)
        with open(self.path("nodes", ap, "partition.json"), "w") as f:
            json.dump(made, f)
        return made

    def remove_partition(self, ap):
        """Remove an access point's parent cgroup (its containers gone)."""
        try:
            with open(self.path("nodes", ap, "partition.json")) as f:
                made = json.load(f)
        except FileNotFoundError:
            return True
        deadline = time.monotonic() + 5
        while not partition_mod.remove(None, dirs_=made):
            if time.monotonic() > deadline:  # a container still dying
                self.log("cgroup partition of %s not removed: %s" % (
                    ap, ", ".join(sorted(made.values()))))
                return False
            time.sleep(0.1)
        os.unlink(self.path("nodes", ap, "partition.json"))
        return True

    def _idmap_start(self, ap):
        """Emulated access points share one kernel: each gets its own uid
        ranges, as instances on different Pis never share a uid either."""
        defaults = {o.name: o.default for o in node_conf.node_opts}
        return defaults["idmap_start"] + self.net.aps.index(ap) * \
            defaults["idmap_slots"] * defaults["idmap_size"]

    def start_node_agent(self, ap, libvirtd_pid=None):
        libvirtd_pid = libvirtd_pid or self._pid("libvirtd-" + ap)
        conf = self.path("nodes", ap, "mec-conpaas.conf")
        return self._spawn("agent-" + ap, self._nsenter(ap, libvirtd_pid) + [
            self._tool("mec-conpaas-node-agent"), "--config-file", conf])

    def _wait_nodes(self):
        token = open(self.path("admin-token")).read().strip()

        def all_up():
            try:
                nodes = httpserver.call("GET", self.manager_url() + "/v1/nodes",
                                        token, timeout=5, tls=self.manager_tls())["nodes"]
            except Exception:
                return False
            return sorted(n["name"] for n in nodes if n["state"] == "up") == \
                sorted(self.net.aps)
        self._wait("node registration", all_up, timeout=60,
                   logname="agent-" + self.net.aps[-1])

    # -- status --------------------------------------------------------------
    def status(self):
        try:
            mode = open(self.path("shaping")).read().strip()
        except OSError:
            mode = None
        procs = {}
        for f in sorted(os.listdir(self.path("pids"))) if os.path.isdir(
                self.path("pids")) else []:
            name = f[:-4]
            procs[name] = "running" if self._pid(name) else "dead"
        rtts = {}
        up = bool(self.net.existing_netns())
        for ap in self.net.aps:
            addr = self.net.bridge_address(ap)
            measured = (shaping.measure_rtt_ms(addr, 9681)
                        if up and self.net.routed_locally(addr) else None)
            expected = shaping.expected_rtt_ms(self.net, ap) if mode != "off" else 0.0
            rtts[ap] = {"expected_ms": expected,
                        "measured_ms": round(measured, 2) if measured else None}
        linkd_ok = all(v == "running" for k, v in procs.items() if k.startswith("linkd"))
        verified = mode in ("netem", "nfqueue") and linkd_ok and all(
            r["measured_ms"] is not None and r["measured_ms"] >= 0.8 * r["expected_ms"]
            for r in rtts.values())
        return {"up": up, "access_points": self.net.aps,
                "manager_url": self.manager_url(), "processes": procs,
                "latency_shaping": {
                    "method": mode, "active": verified,
                    "wifi_latency_ms": self.topo.get("wifi_latency_ms", 0),
                    "master_to_ap_rtt": rtts,
                    "note": None if verified else
                    "LATENCY SHAPING IS NOT ACTIVE: numbers measured now are unshaped"},
                "credentials": self.path("credentials.yaml")}

    # -- down ----------------------------------------------------------------
    def destroy_containers(self, ap):
        sock = self.path("nodes", ap, "libvirt", "run", "libvirt-sock")
        if not os.path.exists(sock):
            return
        uri = "lxc:///system?socket=" + sock
        out = subprocess.run(["virsh", "-c", uri, "list", "--name"],
                             capture_output=True, text=True).stdout.split()
        for name in out:
            subprocess.run(["virsh", "-c", uri, "destroy", name], capture_output=True)

    def node_down(self, ap):
        """Power an access point off: its containers stop, its node agent,
        HAProxy and libvirtd are killed (SIGKILL, nothing is flushed), so its
        mounts go with libvirtd's mount namespace.  What stays is what a
        powered-off Pi keeps: its disk (instance directories, the agent's
        state) and its wires (namespace, bridge, links)."""
        self.kill("agent-" + ap, signal.SIGKILL)
        self.destroy_containers(ap)
        names = ("agent-" + ap, "haproxy-" + ap, "libvirtd-" + ap)
        for name in names[1:]:
            self.kill(name, signal.SIGKILL)
        self._wait(ap + " powered off", lambda: not any(self._pid(n) for n in names),
                   timeout=20)

    def node_up(self, ap):
        """Power an access point on again after :meth:`node_down`: its boot
        clears ``/run`` (stale sockets would look like live daemons), then
        libvirtd, HAProxy (every endpoint with no server until the manager
        says otherwise) and the node agent start as at ``up``."""
        base = self.path("nodes", ap)
        shutil.rmtree(os.path.join(base, "libvirt", "run"), ignore_errors=True)
        run = os.path.join(base, "run")
        for entry in os.listdir(run) if os.path.isdir(run) else []:
            if entry.endswith(".sock"):
                os.unlink(os.path.join(run, entry))
        self._start_ap(ap)

    def kill(self, name, sig=signal.SIGTERM):
        pid = self._pid(name)
        if pid:
            try:
                os.killpg(pid, sig)
            except OSError:
                os.kill(pid, sig)
        return pid

    def down(self, quiet=False):
        if not quiet:
            self.log("tearing the edge down...")
        for ap in self.net.aps:
            self.destroy_containers(ap)
        names = [f[:-4] for f in os.listdir(self.path("pids"))] if os.path.isdir(
            self.path("pids")) else []
        for name in names:
            self.kill(name)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(self._pid(n) for n in names):
            time.sleep(0.1)
        for name in names:
            self.kill(name, signal.SIGKILL)
            try:
                os.unlink(self.path("pids", name + ".pid"))
            except OSError:
                pass
        for ap in self.net.aps:
            self.remove_partition(ap)
        self.net.destroy()
        # Overlay mounts lived in the per-AP mount namespaces, gone with
        # them; remove instance directories so a new edge starts clean.
        # The containers are gone, so the manager's store, tokens and node
        # state would describe nothing: start the next edge from scratch.
        # Logs stay for post-mortems.
        if os.path.isdir(self.state):
            for entry in os.listdir(self.state):
                if entry != "logs":
                    full = self.path(entry)
                    if os.path.isdir(full) and not os.path.islink(full):
                        shutil.rmtree(full, ignore_errors=True)
                    else:
                        os.unlink(full)


def dump(status):
    return json.dumps(status, indent=2, sort_keys=True)
