"""The node agent: one per access point.

Registers the node with the manager, heartbeats a resource report, runs
container operations for the ``lxc`` driver and keeps the access point's
HAProxy in line with what the manager wants.
"""
import contextlib
import fcntl
import functools
import logging
import os
import socket
import struct
import threading
import time
import urllib.parse

from mec_conpaas import digest
from mec_conpaas import exception
from mec_conpaas.agents.node import apconfig
from mec_conpaas.agents.node import capacity as capacity_mod
from mec_conpaas.agents.node import haproxy as haproxy_mod
from mec_conpaas.agents.node import httpserver
from mec_conpaas.agents.node import isolation as isolation_mod
from mec_conpaas.agents.node import joining
from mec_conpaas.agents.node import liveness as liveness_mod
from mec_conpaas.agents.node import memory
from mec_conpaas.agents.node import probe
from mec_conpaas.agents.node import report as report_mod
from mec_conpaas.agents.node import routes as routes_mod
from mec_conpaas.agents.node import statesync
from mec_conpaas.agents.node import stations as stations_mod

LOG = logging.getLogger(__name__)
SERVICE_AGENT_PORT = 8999
PULL_BATCH = 64 << 20  # bytes of state per export request in a bulk copy
RESTORE_TIMEOUT = 60  # s an app may take to come back with migrated state
NODE_NAMESPACE = "6f6e0a52-7c1e-4d37-9a8b-0c6d1e4f2a10"  # a UUID


def interface_info(ifname):
    """(MAC, first IPv4 address) of an interface, via ioctls."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("256s", ifname[:15].encode())
        mac = fcntl.ioctl(s.fileno(), 0x8927, req)[18:24]  # SIOCGIFHWADDR
        try:
            addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])
        except OSError:
            addr = None
        return ":".join("%02x" % b for b in mac), addr
    finally:
        s.close()


@contextlib.contextmanager
def _background():
    """Run the calling thread at nice 10: a bulk state copy must not take
    the CPU from the instance it copies, which still serves (1 GB copied at
    normal priority on a loaded 2-core node starved it into timeouts)."""
    tid = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, tid)
    os.setpriority(os.PRIO_PROCESS, tid, max(before, 10))
    try:
        yield
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, before)
        except PermissionError:
            pass  # without CAP_SYS_NICE: the thread stays lowered


def _peer(body, key):
    """The peer node agent a state copy talks to, checked before any work."""
    peer = body.get(key) if isinstance(body, dict) else None
    if not isinstance(peer, dict) or not all(
            isinstance(peer.get(k), str) and peer[k]
            for k in ("url", "token", "instance_id")):
        raise exception.BadRequest(
            "expected {%r: {'url': ..., 'token': ..., 'instance_id': ...}}" % key)
    return peer


class NodeAgent:

    def __init__(self, conf):
        self.conf = conf
        opts = conf.node_agent
        self.name = opts.node_name or socket.gethostname()
        self.hostname = socket.gethostname()
        try:
            self.mac, bridge_addr = interface_info(opts.bridge)
        except OSError:
            self.mac, bridge_addr = joining.first_mac(), None
        self.address = opts.advertise_address or bridge_addr or "127.0.0.1"
        self.id = self._load_id()
        self.token = self._load_token()
        # Joining (agents/node/joining.py): this node's own credential and
        # allocation; an allocated instance network must be known before
        # the containers are set up, so a first join happens here.
        self.identity = joining.identity(conf.join.identity, self.mac)
        self.membership = joining.Membership(conf)
        self.manager_tls = joining.manager_tls(conf) if os.path.exists(
            conf.join.manager_ca_file) else None
        # A pinned join token joins first too: the agent API's certificate
        # comes with the answer and the API must serve it from the start.
        if (self.membership.credential is None and conf.node_agent.registration_token
                and ((conf.join.networks == "allocated"
                      and self.membership.allocation is None)
                     or joining.SEPARATOR in conf.node_agent.registration_token)):
            self._join_until_done()
        elif (self.membership.credential and conf.join.networks == "allocated"
              and self.membership.allocation is None):
            self._join_until_done()  # its allocation lost: again, as itself
        self._use_allocation()
        if not opts.advertise_address:
            # The join may just have moved the bridge to the allocated network:
            # advertise the address it has now, not the image's default one.
            try:
                self.address = interface_info(opts.bridge)[1] or self.address
            except OSError:
                pass
        self.server_tls = joining.server_tls(conf)
        self._peer_tls = None  # the deployment CA's context, made on first use
        self.routes = routes_mod.RouteTable(conf.join.route_protocol) \
            if conf.join.manage_routes else None
        self.routes_wanted = self.routes_version = None  # as the manager sent them
        # instance id -> its service agent's secret (see isolation.agent_secret)
        self.agent_secret = functools.partial(isolation_mod.agent_secret, self.token)
        self.reporter = report_mod.Reporter(conf.state_path)
        self.haproxy = haproxy_mod.HAProxy(conf)
        self.containers = None
        if opts.container_backend == "libvirt":
            from mec_conpaas.agents.node import containers
            os.makedirs(opts.instances_path, exist_ok=True)
            self.containers = containers.LibvirtContainers(conf, self.fetch_bundle)
        elif opts.container_backend == "nova":
            from mec_conpaas.agents.node import nova
            os.makedirs(opts.instances_path, exist_ok=True)
            self.containers = nova.NovaContainers(conf, self.fetch_bundle)
        self.capacity = capacity_mod.Capacity(conf)
        if self.containers is not None:
            self.containers.agent_secret = self.agent_secret
            self.containers.capacity = self.capacity
        self.isolation = isolation_mod.Isolation(
            conf, self.containers.ports if self.containers else dict)
        self.registered = threading.Event()
        self.stop = threading.Event()
        self.proxy_lock = threading.Lock()
        self.served_manifests = {}
        self.sent = statesync.Sent()  # tails for later deltas
        self.pulls = statesync.Pulls(os.path.join(conf.state_path, "pulls"))
        self.last_heartbeat = None  # time.monotonic() of the last one accepted
        self.beacon = None  # liveness datagrams, once the manager offers them
        self.full_interval = conf.liveness.full_report_interval
        self._metrics = None  # the Prometheus registry, made at the first scrape
        self._metrics_lock = threading.Lock()
        # A station coming or going heartbeats at once (stations.py).
        self.wake = threading.Event()
        self.stations, self.station_source = stations_mod.from_conf(conf, self.wake.set)

    def _load_id(self):
        """Node id from host name and MAC (as in seed 002), fixed at first
        start: a bridge's MAC follows its ports, so recomputing it later
        could turn this node into a stranger."""
        path = os.path.join(self.conf.state_path, "node-id")
        os.makedirs(self.conf.state_path, exist_ok=True)
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            node_id = digest.uuid5(NODE_NAMESPACE, self.hostname + "|" + self.mac)
            with open(path, "w") as f:
                f.write(node_id)
            return node_id

    def _load_token(self):
        path = os.path.join(self.conf.state_path, "node-agent.token")
        os.makedirs(self.conf.state_path, exist_ok=True)
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            token = digest.token_urlsafe(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token)
            return token

    # -- joining -----------------------------------------------------------
    def join(self):
        """Join once (joining.Membership.join); the node takes the id the
        manager keeps for its identity (a re-flashed Pi is the same node)."""
        opts = self.conf.node_agent
        body = {"id": self.id, "name": self.name, "identity": self.identity,
                "hostname": self.hostname, "mac": self.mac}
        if self.conf.join.networks == "fixed":
            body.update(instance_network=opts.instance_network,
                        client_network=self.conf.join.client_network,
                        container_backend=opts.container_backend)
        try:
            answer = self.membership.join(body)
        except joining.JoinRefused as e:
            joining.notify(self.conf, e.message)
            raise
        self.manager_tls = joining.manager_tls(self.conf)
        if answer is None:
            return
        joining.clear_notice(self.conf, "joined %s as %s" % (opts.manager_url, self.name))
        if answer["id"] != self.id:
            self.id = answer["id"]
            with open(os.path.join(self.conf.state_path, "node-id"), "w") as f:
                f.write(self.id)
        LOG.info("joined %s as %s (%s): %s", opts.manager_url, self.name, self.id,
                 answer.get("allocation"))

    def _join_until_done(self):
        delay = 2
        while True:
            try:
                return self.join()
            except joining.JoinRefused as e:
                # A token or setting to fix, or an admin's approval to wait
                # for: the message (also on the console) says which.
                LOG.error("cannot join: %s; trying again in %d s", e.message,
                          self.conf.join.refused_retry_interval)
                time.sleep(self.conf.join.refused_retry_interval)
            except exception.NodeError as e:
                LOG.warning("cannot join yet (%s); retrying in %d s", e.message, delay)
                time.sleep(delay)
                delay = min(delay * 2, 60)

    def _use_allocation(self):
        alloc = self.membership.allocation
        if alloc and self.conf.join.networks == "allocated":
            self.conf.set_override("instance_network", alloc["instance_network"],
                                   group="node_agent")
            if self.conf.join.apply_allocation_to:
                try:
                    apconfig.apply(self.conf.join.apply_allocation_to, alloc)
                except OSError as e:
                    LOG.error("allocation %s not written into this access point's "
                              "files: %s", alloc.get("number"), e)

    # -- talking to the manager ----------------------------------------
    def manager(self, method, path, body=None, raw=False, timeout=30):
        return httpserver.call(method, self.conf.node_agent.manager_url.rstrip("/")
                               + path, self.membership.credential,
                               body, timeout=timeout, raw=raw, tls=self.manager_tls)

    def heard(self, answer):
        """A heartbeat answer: keep the allocation, install the routes."""
        answer = answer or {}
        if self.membership.save_allocation(answer.get("allocation")):
            self._use_allocation()
        if "routes" in answer:  # only when they changed (manager/routecache.py)
            self.routes_wanted = answer["routes"]
            self.routes_version = answer.get("routes_version")
        if self.routes is not None and self.routes_wanted is not None:
            try:  # also when unchanged: sync re-checks the table now and then
                self.routes.sync(self.routes_wanted)
            except (OSError, RuntimeError, ValueError) as e:
                LOG.warning("routes to the other nodes not updated: %s", e)

    def registration(self):
        opts = self.conf.node_agent
        return {"id": self.id, "name": self.name, "hostname": self.hostname,
                "mac": self.mac, "address": self.address,
                "agent_port": opts.bind_port, "agent_token": self.token,
                "container_backend": opts.container_backend,
                "instance_network": opts.instance_network,
                "client_network": (self.membership.allocation or {}).get(
                    "client_network") or self.conf.join.client_network,
                "max_instances": opts.max_instances if self.containers else 0,
                "agent_tls": self.server_tls is not None,
                # The card's settings file findings (roles/first_boot), for node show.
                "settings_warnings": joining.settings_warnings(self.conf)}

    def heartbeat_loop(self):
        interval = self.conf.node_agent.heartbeat_interval
        while not self.stop.is_set():
            try:
                if self.membership.credential is None:
                    self.join()
                if not self.registered.is_set():
                    self.manager("POST", "/v1/nodes/register", self.registration())
                    self.registered.set()
                    LOG.info("registered with %s as %s (%s)",
                             self.conf.node_agent.manager_url, self.name, self.id)
                report = self.report()
                try:
                    report["stations"] = self.stations.snapshot()
                    report["services"] = stations_mod.service_report(
                        self.haproxy, haproxy_mod.proxy_stats(self.haproxy)
                        if self.haproxy.services else None)
                except Exception:  # users are extra: the heartbeat must go
                    LOG.exception("reporting stations and service users")
                self._heartbeat(report)
            except exception.NodeError as e:
                status = getattr(e, "remote_status", None)
                if status == 404:
                    self.registered.clear()  # manager lost us: register again
                elif status == 401 and os.path.exists(
                        self.conf.join.credential_file):
                    # Revoked: join again (with a new join token, if the
                    # admin put one in registration_token).
                    self.membership.forget_credential()
                    self.registered.clear()
                LOG.warning("registration or heartbeat failed: %s", e.message)
            except joining.JoinRefused as e:
                LOG.error("cannot join: %s", e.message)
            memory.trim()  # what serving since the last beat freed
            self.wake.wait(interval)
            self.wake.clear()

    def _heartbeat(self, report):
        """A liveness datagram when the manager has the report's shape and
        took the last one; else the full report over HTTP
        (agents/node/liveness.py says when)."""
        shape = liveness_mod.fingerprint(report)
        beacon = self.beacon
        if beacon is not None and not beacon.needs_full(shape, self.full_interval):
            beacon.beat()
            if beacon.last_ack is not None:
                self.last_heartbeat = max(self.last_heartbeat or 0.0, beacon.last_ack)
            return
        sent_at = time.time()
        body = {"report": report}
        if self.routes_version:
            body["routes_version"] = self.routes_version
        answer = self.manager("POST", "/v1/nodes/%s/heartbeat" % self.id, body)
        self.heard(answer)
        self.last_heartbeat = time.monotonic()
        try:
            self.beacon = liveness_mod.for_answer(
                beacon, answer, self.id, self.membership.credential, self.conf)
        except OSError as e:  # no route for UDP: HTTP it stays
            LOG.warning("liveness datagrams not used: %s", e)
            self.beacon = None
        self.full_interval = liveness_mod.full_interval(answer, self.conf)
        if self.beacon is not None:
            # the next full report is far off
            httpserver.hang_up(self.conf.node_agent.manager_url)
            self.beacon.synced(answer["liveness"]["clock"], sent_at, time.time(), shape)

    def fetch_bundle(self, sha256, cache_dir):
        """The bundle with that SHA-256, from the node's cache or the manager.
        The cache is content-addressed and kept for every later instance of the
        service: a bundle cut short or altered on the way is refused before it
        enters it, and a name that is not a SHA-256 never becomes a path."""
        from mec_conpaas import bundles  # loaded already by containers, the caller
        if not bundles.is_sha256(sha256):
            raise exception.BadRequest("bundle_sha256 must be 64 lowercase hex digits, "
                                       "not %r" % (sha256,))
        path = os.path.join(cache_dir, sha256 + ".tar.gz")
        if os.path.exists(path):
            return path
        data = self.manager("GET", "/v1/bundles/%s" % sha256, raw=True,
                            timeout=120)
        got = digest.sha256(data).hexdigest()
        if got != sha256:
            raise exception.NodeError(
                "the manager sent bundle %s with SHA-256 %s (%d bytes): not cached; "
                "retry, and check the manager's bundle store" % (sha256, got, len(data)))
        tmp = path + ".%d.part" % threading.get_ident()
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return path

    # -- API -------------------------------------------------------------
    def authenticate(self, header):
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not digest.compare_digest(
                value.strip(), self.token):
            raise exception.Unauthorized("missing or wrong node agent token")

    def _need_containers(self):
        if self.containers is None:
            raise exception.Conflict(
                "this node's container_backend is 'none': it runs no instances")
        return self.containers

    def router(self):
        r = httpserver.Router()
        inst = r"/v1/instances/(?P<iid>[0-9a-f-]{36})"
        r.add("GET", "/v1/health", lambda body: {
            "id": self.id, "name": self.name, "haproxy": self.haproxy.alive(),
            "isolation": self.isolation.status()})
        r.add("GET", "/v1/report", lambda body: self.report())
        r.add("GET", "/v1/instances",
              lambda body: {"instances": self._need_containers().list()})
        r.add("POST", "/v1/instances", self.create_instance)
        r.add("GET", inst, lambda body, iid: self._need_containers().info(iid))
        r.add("DELETE", inst, self.delete_instance)
        r.add("POST", inst + "/freeze", lambda body, iid: dict(
            self._need_containers().freeze(iid, (body or {}).get("quiesce_port"),
                                           (body or {}).get("max_wait_ms")),
            frozen=iid))
        r.add("POST", inst + "/stop-frozen", self.stop_frozen)
        r.add("POST", inst + "/resize", self.resize_instance)
        r.add("POST", inst + "/thaw", lambda body, iid: (
            self._need_containers().thaw(iid), {"thawed": iid})[1])
        r.add("GET", inst + "/logs", lambda body, iid: {
            "log": self._need_containers().logs(iid)})
        r.add("GET", inst + "/state/manifest", self.serve_manifest)
        r.add("POST", inst + "/state/push", self.push_state)
        r.add("POST", inst + "/state/import", self.import_state)
        r.add("POST", inst + "/state/import-final", self.import_final)
        r.add("GET", inst + "/state/archive", lambda body, iid: httpserver.Response(
            statesync.archive(self._need_containers().state_dir(iid)),
            content_type="application/x-tar"))
        r.add("POST", inst + "/state/export", self.export_state)
        r.add("POST", inst + "/state/pull", self.pull_state)
        r.add("PUT", "/v1/proxy", self.put_proxy)
        r.add("GET", "/v1/proxy", lambda body: {"services": self.haproxy.status()})
        r.add("GET", "/metrics", self.metrics_exposition)
        r.add("GET", "/v1/stations", lambda body: {"stations": self.stations.snapshot()})
        r.add("POST", "/v1/stations", self.attach_user)
        r.add("DELETE", "/v1/stations/(?P<user>[a-z][a-z0-9-]{0,10})", self.detach_user)
        return r

    def metrics_exposition(self, body):
        """The metrics module is imported at the first scrape: a node nobody
        scrapes does not pay for it (it writes the text itself, without
        prometheus_client: metrics.py says why)."""
        from mec_conpaas.agents.node import metrics as metrics_mod
        with self._metrics_lock:
            if self._metrics is None:
                self._metrics = metrics_mod.registry(self)
        return metrics_mod.exposition(self._metrics)

    def create_instance(self, body):
        info = self._need_containers().create(
            dict(body, master_ip=body.get("master_ip") or self.manager_address()))
        self.isolation.apply()  # its port may send its own address only
        return info

    def report(self):
        """The heartbeat's report: usage, with this node's capacity and each
        container's size (what admission and auto-scaling decide on)."""
        usage = self.containers.usage() if self.containers else {}
        sizes = self.containers.sizes() if self.containers else {}
        for iid, size in sizes.items():
            usage.setdefault(iid, {}).update(size)
        # Only instances of services with a latency objective (the
        # manager's proxy plan says which): a probe is a request the app
        # serves.
        timed = {sid for sid, svc in self.haproxy.services.items()
                 if svc.get("latency_objective_ms")}
        if self.containers is not None and timed:
            targets = {m["id"]: (m["address"], m.get("service_type") == "web")
                       for m in self.containers.list()
                       if m.get("state") == "RUNNING" and m.get("address")
                       and m.get("service_id") in timed}
            for iid, ms in probe.latencies(targets).items():
                usage.setdefault(iid, {})["latency_ms"] = ms
        return dict(self.reporter.report(usage),
                    capacity=self.capacity.report(sizes))

    def resize_instance(self, body, iid):
        try:
            cpus, memory_mb = float(body["cpus"]), int(body["memory_mb"])
        except (TypeError, KeyError, ValueError):
            cpus = memory_mb = 0
        if cpus <= 0 or memory_mb < 4:
            raise exception.BadRequest("expected {'cpus': cores > 0, "
                                       "'memory_mb': MiB >= 4}")
        return self._need_containers().resize(iid, cpus, memory_mb)

    def delete_instance(self, body, iid):
        self._need_containers().delete(iid)
        self.pulls.forget(iid)
        self.sent.forget(iid)
        self.isolation.apply()
        return {"deleted": iid}

    def stop_frozen(self, body, iid):
        """Migration's source, right after the switch: its held requests
        move to the new instance at once, before the slower delete
        (libvirt, unmounts) that follows."""
        t0 = time.monotonic()
        killed = self._need_containers().stop_frozen(iid)
        return {"killed": killed, "ms": round(1000 * (time.monotonic() - t0), 1)}

    def export_state(self, body, iid):
        paths = body.get("paths") if isinstance(body, dict) else None
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise exception.BadRequest("expected {'paths': [relative path, ...]}")
        sent = self.sent.to(iid, body.get("receiver"),
                            paths if body.get("whole") else ())
        served = self.served_manifests.get(iid)
        if served and body.get("round") == served["round"]:
            # The receiver pulls this round and keeps it by its id: the
            # final push may send the manifest as a change from it.
            served["acked"] = True
        with _background():
            data = statesync.export_tar(self._need_containers().state_dir(iid), paths,
                                        sent=sent)
        return httpserver.Response(data, content_type="application/x-tar")

    def pull_state(self, body, iid):
        """Copy a peer instance's state directory into this one (a bulk or
        pre-copy round: the source keeps serving).  The first pull compares
        the source with this instance's files; later ones (pre-copy rounds)
        with the manifest pulled last, so that what this instance's app
        wrote meanwhile is not overwritten (statesync).  The files come in
        batches of about ``PULL_BATCH`` bytes, so a 1 GB state directory
        never sits whole in either agent's memory, and smaller ones at
        ``[node_agent] state_copy_rate_mb`` (statesync.Pacer)."""
        src = _peer(body, "source")
        dest = self._need_containers().state_dir(iid)
        base = src["url"].rstrip("/") + "/v1/instances/%s/state" % src["instance_id"]
        tls = self.peer_tls(src)
        served = httpserver.call("GET", base + "/manifest", src["token"], **tls)
        remote, round_id = served["manifest"], served.get("round")
        last = self.pulls.last(iid, src["instance_id"])
        paths = statesync.wanted(statesync.manifest(dest) if last is None else last,
                                 remote)
        pacer = statesync.Pacer(self.conf.node_agent.state_copy_rate_mb * 2**20,
                                PULL_BATCH)
        batches = statesync.batches(paths, remote, pacer.limit) or [[]]
        nbytes = 0
        for n, batch in enumerate(batches, 1):
            ask = {"paths": batch, "receiver": iid, "round": round_id}
            for _ in range(2):
                data = httpserver.call("POST", base + "/export", src["token"], ask,
                                       raw=True, timeout=300, **tls)
                # Deletions and directories once, with the last batch.
                try:
                    with _background():
                        nbytes += statesync.import_tar(
                            dest, data, remote, tree=n == len(batches),
                            owner=self.containers.root_ids(iid), base=last)
                    break
                except statesync.TailMismatch as e:
                    ask = {"paths": e.paths, "receiver": iid, "whole": True,
                           "round": round_id}
            if n < len(batches):
                pacer.sent_batch(len(data))
        self.pulls.remember(iid, src["instance_id"], remote, round_id)
        return {"files": len(paths), "bytes": nbytes, "batches": len(batches),
                "round": "delta" if last is not None else "bulk"}

    def peer_tls(self, peer):
        """How to reach a peer node agent serving HTTPS: checked against the
        deployment CA (pinned at join) for the name the manager gave."""
        if not peer.get("server_name"):
            return {}
        if self._peer_tls is None:
            self._peer_tls = joining.tls_context(self.conf.join.manager_ca_file)
        return {"tls": self._peer_tls, "server_name": peer["server_name"]}

    def serve_manifest(self, body, iid):
        manifest = statesync.manifest(self._need_containers().state_dir(iid))
        if isinstance(body, dict) and body.get("snapshot"):
            return {"manifest": manifest}
        # What the peer is about to copy: the base of a later delta push.
        # Not the manager's snapshots: one taken during a migration would
        # move the base past what the target has.  Its round id lets the
        # push send the final manifest as a change from it (statesync).
        round_id = digest.token_hex(8)
        self.served_manifests[iid] = {"round": round_id, "manifest": manifest,
                                      "acked": False}
        return {"manifest": manifest, "round": round_id}

    def push_state(self, body, iid):
        """Final copy, driven from the source: send only what changed since
        the manifest served for the last pre-copy round, with the manifest
        (as its change since that round, when the target kept it) so the
        target applies deletions too.  One node-to-node round trip; each
        step is timed (``steps_ms``), as it all lies in migration's
        critical window."""
        dst = _peer(body, "target")
        containers = self._need_containers()
        src = containers.state_dir(iid)
        freeze, frozen, t0 = body.get("freeze"), {}, time.monotonic()
        if body.get("warm") or isinstance(freeze, dict) and freeze.get("warm", True):
            # Before the freeze, one small call to the target: the delta then
            # goes over a connection known to be open, not one the target
            # closed while idle (a pushing source last spoke to it one
            # migration ago, if ever: a handshake, or a failed send and a
            # handshake, inside the window), and not one back in slow start.
            # ``warm`` alone: only this, ahead of a switch-first window.
            try:
                httpserver.call("GET", dst["url"].rstrip("/") + "/v1/health",
                                dst["token"], timeout=5, **self.peer_tls(dst))
            except exception.NodeError as e:
                LOG.warning("target %s before the freeze: %s", dst["url"], e.message)
            if body.get("warm"):
                return {"warmed_ms": round(1000 * (time.monotonic() - t0), 1)}
        marks = [time.monotonic()]
        if isinstance(freeze, dict):
            frozen = containers.freeze(iid, freeze.get("quiesce_port"))
        marks.append(time.monotonic())
        current = statesync.manifest(src)
        served = self.served_manifests.pop(iid, None) or {}
        base = served.get("manifest", {})
        paths = statesync.wanted(base, current)
        marks.append(time.monotonic())
        # The manifest as its change since the round the target pulled last:
        # a full one is an entry per file of the state directory (70 kB at
        # 1 GB of 1 MB files), sent over the backbone inside the window.
        delta = statesync.manifest_delta(served["round"], base, current) \
            if served.get("acked") else None
        data = statesync.export_tar(src, paths, with_manifest=current,
                                    manifest_delta=delta,
                                    sent=self.sent.to(iid, dst["instance_id"]))
        marks.append(time.monotonic())
        for _ in range(3):
            got = httpserver.call(
                "POST", dst["url"].rstrip("/") + "/v1/instances/%s/state/%s" % (
                    dst["instance_id"], "import-final" if dst.get("restore") else "import"),
                dst["token"], data, timeout=300 + RESTORE_TIMEOUT,
                content_type="application/x-tar", **self.peer_tls(dst)) or {}
            if got.get("manifest_unknown"):
                # It did not keep that round (a pull cut short): the same
                # files with the whole manifest; it wrote nothing.
                data, delta = statesync.with_full_manifest(data, current), None
            elif got.get("tail_mismatch"):
                # The target's copy of these is not what it was sent: whole.
                delta = None
                data = statesync.export_tar(
                    src, got["tail_mismatch"], with_manifest=current,
                    sent=self.sent.to(iid, dst["instance_id"], got["tail_mismatch"]))
            else:
                break
        else:
            # Not taken: a finish the manager then asked for would have
            # the app go on without the writes since the last round.
            raise exception.Conflict(
                "instance %s refused the final delta three times (%s)" % (
                    dst["instance_id"], "tail mismatch" if got.get("tail_mismatch")
                    else "unknown manifest round"))
        marks.append(time.monotonic())
        steps = dict(zip(("freeze", "manifest", "export", "send_import_restore"),
                         (round(1000 * (b - a), 1) for a, b in zip(marks, marks[1:]))))
        steps["import"] = got.get("import_ms")
        steps["target_call_before_freeze"] = round(1000 * (marks[0] - t0), 1)
        steps.update({"freeze_" + k: v for k, v in (frozen.get("ms") or {}).items()})
        return {"files": len(paths), "bytes": len(data),
                "manifest": "change" if delta is not None else "whole",
                "freeze_attempts": frozen.get("attempts"),
                "quiescent": frozen.get("quiescent"),
                "restore": got.get("restore"), "steps_ms": steps}

    def import_state(self, body, iid):
        if not isinstance(body, bytes):
            raise exception.BadRequest("expected an application/x-tar body")
        t0 = time.monotonic()
        dest = self._need_containers().state_dir(iid)
        try:
            nbytes = statesync.import_tar(
                dest, body, owner=self.containers.root_ids(iid),
                pulled=functools.partial(self.pulls.of_round, iid))
        except statesync.TailMismatch as e:
            return {"tail_mismatch": e.paths}
        except statesync.ManifestBaseUnknown:
            return {"manifest_unknown": True}
        return {"bytes": nbytes, "import_ms": round(1000 * (time.monotonic() - t0), 1)}

    def import_final(self, body, iid):
        """Migration's final delta, then the app takes it up (restore.sh or
        a restart, by its service agent) before the proxies switch: a call
        on this node's bridge, inside the critical window."""
        res = self.import_state(body, iid)
        if res.get("tail_mismatch") or res.get("manifest_unknown"):
            return res  # the source sends again; no restore yet
        try:
            res["restore"] = httpserver.call(
                "POST", "http://%s:%d/restore" % (
                    self._need_containers().address(iid), SERVICE_AGENT_PORT),
                self.agent_secret(iid),
                body={"phase": "finish", "timeout": RESTORE_TIMEOUT},
                timeout=RESTORE_TIMEOUT + 5)
        except exception.NodeError as e:
            raise exception.Conflict("instance %s did not take up its migrated "
                                     "state: %s" % (iid, e.message))
        return res

    def manager_address(self):
        """The manager's address as this node reaches it (``MASTER_IP``):
        the host of ``manager_url``, resolved; when that is a loopback
        address the manager runs here, and instances reach it at this
        node's own address."""
        host = urllib.parse.urlsplit(self.conf.node_agent.manager_url).hostname
        try:
            addr = socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
        except (OSError, IndexError):
            raise exception.NodeError(
                "cannot resolve the host of [node_agent] manager_url %r" % host)
        return self.address if addr.startswith("127.") else addr

    def put_proxy(self, body):
        if not isinstance(body, dict) or not isinstance(body.get("services"), dict):
            raise exception.BadRequest("expected {'services': {...}}")
        t0 = time.monotonic()
        with self.proxy_lock:
            # This answer is in migration's critical window: no status
            # read-back (GET /v1/proxy has it), and the isolation rules in
            # the background (they take milliseconds more, see isolation).
            self.haproxy.apply(body["services"], report=False)
            self.isolation.update(body["services"], body.get("instance_networks"))
            return {"applied": sorted(body["services"]),
                    "ms": round(1000 * (time.monotonic() - t0), 1)}

    def _emulated_users(self):
        """The embedded edge's users module, as seen from this AP; Conflict on
        a real AP, whose users attach by associating with hostapd."""
        found = None
        if self.conf.node_agent.emulated_station_bridge:
            from mec_conpaas.edge import users as users_mod
            found = users_mod.on_this_ap(self.name)
        if found is None:
            raise exception.Conflict(
                "access point %s has real Wi-Fi users: they attach and move by "
                "associating with it, not through the API" % self.name)
        return found

    def attach_user(self, body):
        """Pull an emulated user onto this AP (``{"user": name}``)."""
        from mec_conpaas.edge import users as users_mod
        user = (body or {}).get("user")
        if not isinstance(user, str):
            raise exception.BadRequest("expected {'user': name}")
        users, here = self._emulated_users()
        try:
            before, addr = users.attach(user, here)
        except (users_mod.UserError, RuntimeError) as e:
            raise exception.BadRequest(str(e)) from None
        self.wake.set()
        prefix = users.prefix
        return {"user": user, "ap": self.name, "address": addr,
                "previous": before[len(prefix):] if before else None}

    def detach_user(self, body, user):
        from mec_conpaas.edge import users as users_mod
        users, here = self._emulated_users()
        try:
            if users.where(user) != here:
                raise exception.NotFound("user %s is not attached to %s" % (
                    user, self.name))
            users.detach(user)
        except users_mod.UserError as e:
            raise exception.NotFound(str(e)) from None
        self.wake.set()
        return {"user": user, "detached_from": self.name}

    def serve(self):
        opts = self.conf.node_agent
        self.haproxy.start()  # what a predecessor left goes at the first plan
        self.isolation.apply()  # as last told, until the manager tells again
        server = httpserver.Server((opts.bind_host, opts.bind_port),
                                   httpserver.make_handler(self.router(),
                                                           self.authenticate))
        server.tls = self.server_tls
        memory.trim()  # what starting freed
        threading.Thread(target=self.heartbeat_loop, daemon=True).start()
        LOG.info("node agent %s listening on %s:%s (%s)", self.name, opts.bind_host,
                 opts.bind_port, "HTTPS" if server.tls else "HTTP")
        try:
            server.serve_forever()
        finally:
            self.stop.set()
            self.wake.set()
