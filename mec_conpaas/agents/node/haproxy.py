"""The access point's stable service endpoints (PiCasso's service proxy).

Every service has one frontend on a fixed port and two tiers of server
slots: ``near`` (the instances nearest to this access point: the manager's
``local`` tier) and ``far`` (the others).  Each server takes at most the
service's ``maxconn`` requests at once; the rest wait in HAProxy's queue
(``timeout queue``), so a saturated instance is not handed more than it
can take.  Connection failures are retried, on another server.

The far tier is, per the manager's ``far_tier``:

``spill``
    a second backend (``bf_``) the frontend picks when the near backend
    already has requests queued (every near server at maxconn) or has no
    server up, and a far server is up.  Queued near requests stay queued
    (they are next for a near slot); the following ones spill.
``backup``
    ``backup`` servers in the near backend: used only when no near server
    is up (what this proxy did before spilling).

Why a second backend chosen on ``queue()``: with 50 users on one access
point and the service's instances on three (bench/overload.py), the
backup tier left the far instances idle while the local one was
saturated; ``balance first`` over one backend would spill too, but sends
every request to the first near server until it is full, so two local
instances no longer share a light load; weighted far servers in one
round-robin backend would take a share of every light load, one hop
further from the user.  The queue test keeps light loads local and
round-robin, and spills only what the local tier cannot take.  Measured
there: the old backup tier failed 259 of 2,067 requests (503s after the
connection retries: the saturated instance's listen backlog overflowed),
p99 4.0 s; queueing alone failed none, p99 1.2 s; queue and spill failed
none of 5,184, p99 0.6 s.  Health checks give an instance 3 s to answer,
more than the service agent's own 2 s probe of the app, so that a slow,
busy instance is judged by its agent, not cut off by HAProxy first.

Moving instances between slots, draining and disabling go through
HAProxy's runtime API, one batched exchange for both backends (a new near
server is ready before a leaving far one stops); only adding or removing a
service, or changing its far tier or maxconn, rewrites the configuration,
with a hitless master-worker reload.  Every slot's address, admin state
(ready, drain, maint) and health are saved to a server-state file just
before the reload, and the new worker starts from them: a reload for one
service costs the others no request.  The file is removed once the new
worker serves, so an HAProxy started afresh (node boot, crash) starts with
every slot disabled until the agent sets them, never with addresses that
may belong to another tenant's instance by then.
"""
import io
import logging
import os
import socket
import time

from mec_conpaas import exception

LOG = logging.getLogger(__name__)

GLOBAL = """\
# Written by mec-conpaas-node-agent; edits are overwritten.
global
    stats socket {admin} mode 600 level admin expose-fd listeners
    stats timeout 10s
    maxconn 4096
    hard-stop-after 30s
    server-state-file {state}
{log}
defaults
    load-server-state-from-file global
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout queue 10s
    timeout check 3s
    retries 3
    option redispatch 1
    default-server inter 300ms fastinter 200ms downinter 300ms rise 1 fall 3
"""

SERVICE = """
# service {name} ({service_id})
frontend fe_{key}
    mode {mode}
    bind :{port}
    # Which users (source addresses) used the service lately: stations.py.
    stick-table type ip size 4k expire {user_expire}s store conn_cnt,conn_rate(10s)
    tcp-request connection track-sc0 src
{log}{routing}    default_backend be_{key}
{backends}"""

BACKEND = """
backend {backend}
    mode {mode}
    balance roundrobin
    option httpchk GET /health
{close}    http-check expect status 200
{retry}{servers}"""

# L7 retries, on another server (``option redispatch 1`` above).  A frozen
# migration source never reads the requests sent to it while frozen: they
# sit in its sockets until its tasks are killed at the switch, and the
# resets are retried here on the new instance.  ``http-buffer-request``
# makes HAProxy wait for a request's body before it connects: a POST whose
# body came after its headers (http.client sends them apart) had started
# on the old server half-buffered, so HAProxy could not replay it and
# answered 502 (keep-alive: closed without an answer) at the kill, while a
# GET was retried (tests/unit/test_haproxy_retry.py).  What it cannot know
# is whether an app that dies had read a request: for a migration, the
# freeze's quiescence check says none was (containers.freeze), so each
# retried request runs once; an app that crashes after reading a POST gets
# it again on another instance, as before for any request whose headers
# and body came in one segment.
# ``show servers state``'s srv_admin_state bit of a drain set at run time
# (SRV_ADMF_FDRAIN).
ADMIN_FORCED_DRAIN = 0x08

RETRY = ("    option http-buffer-request\n"
         "    retry-on conn-failure empty-response response-timeout\n")

# ``proxy_request_log``: the stock HTTP log format (the timers
# TR/Tw/Tc/Tr/Ta, termination state, connection counts and retries, queue
# positions) led by the accept time as a Unix timestamp with milliseconds,
# and with the server's address (a slot's name does not say which instance
# it held then), so a client's records line up with their log lines.
REQUEST_LOG = {
    "http": '    log global\n    log-format "%Ts.%ms %ci:%cp %ft %b/%s %si:%sp '
            '%TR/%Tw/%Tc/%Tr/%Ta %ST %B %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq %{+Q}r"\n',
    "tcp": "    log global\n    option tcplog\n"}

# A slot's address is set at run time.  It is named by a host name that
# never resolves (RFC 6761's .invalid; no ``resolvers`` section, and no
# ``libc`` among the ``init-addr`` methods) so that ``init-addr last``
# applies: a reloaded worker takes each slot's last address from the
# server-state file.  HAProxy applies no saved address to a server
# configured with an IP literal, so with ``0.0.0.0`` the new worker started
# its instances' slots UP and ready (their saved state) at 0.0.0.0, failed
# their checks at once and answered 503 until the node agent set the
# addresses again: the other services' residual 503 at a reload.
SERVER = ("    server-template {tier} {slots} unassigned.invalid:8080 "
          "init-addr last,0.0.0.0 check port 8999 disabled{maxconn}{backup}\n")

# Spill: a request goes to the far backend when the near one already has
# requests waiting for a free slot (every near instance is at maxconn), or
# has no healthy instance at all, and some far instance is up.  Requests
# already queued in the near backend stay there: queueing is bounded by
# ``timeout queue``, and the next ones spill instead of joining them.
SPILL = """\
    acl near_busy queue(be_{key}) gt 0
    acl near_down nbsrv(be_{key}) eq 0
    acl far_up nbsrv(bf_{key}) gt 0
    use_backend bf_{key} if far_up near_busy || far_up near_down
"""


# How long a user that stopped sending stays in a frontend's stick table.
USER_EXPIRE_S = 30


def _key(service_id):
    return service_id.replace("-", "")[:12]


def spills(svc):
    """Whether the far tier takes the near tier's overflow (else it is
    HAProxy ``backup`` servers, used only when no near instance is up)."""
    return svc.get("far_tier", "spill") == "spill"


def backends(sid, svc):
    """Tier -> the HAProxy backend holding its server slots."""
    key = _key(sid)
    return {"near": "be_" + key, "far": ("bf_" if spills(svc) else "be_") + key}


class HAProxy:

    def __init__(self, conf):
        opts = conf.node_agent
        self.config_path = opts.haproxy_config
        # Servers' addresses and states, saved before each reload so the new
        # worker starts serving with them (not with every slot disabled).
        self.state_path = os.path.join(os.path.dirname(self.config_path),
                                       "servers.state")
        self.admin_socket = opts.haproxy_admin_socket
        self.master_socket = opts.haproxy_master_socket
        self.slots = opts.proxy_slots
        self.request_log = opts.proxy_request_log
        self.services = {}
        # Whether the running HAProxy was reloaded with the config file as it
        # is now.  Not known at start: the HAProxy found running was loaded
        # by a predecessor that may have died between writing the config and
        # reloading, and services deleted while no agent ran are still in it
        # (``apply``).
        self.loaded = False

    def start(self):
        """What a starting node agent does with the HAProxy it may find
        running: write the config as it knows it (no service until the
        manager's plan; a fresh HAProxy starts from it) and remove a
        server-state file that a predecessor killed mid-reload left (a fresh
        start must not take it: see the module docstring).  Whatever the
        running HAProxy was loaded with is replaced at the first ``apply``
        (``loaded``)."""
        self.write_config(self.services)
        try:
            os.unlink(self.state_path)
        except FileNotFoundError:
            pass

    # -- configuration -------------------------------------------------
    def render(self, services):
        text = GLOBAL.format(admin=self.admin_socket, state=self.state_path,
                             log="    log stdout format raw local0\n"
                             if self.request_log else "")
        for sid in sorted(services):
            svc = services[sid]
            key = _key(sid)
            mode = "http" if svc.get("mode", "http") == "http" else "tcp"
            maxconn = int(svc.get("maxconn") or 0)
            common = {
                "mode": mode,
                "retry": (RETRY if mode == "http" else ""),
                "close": "    option http-server-close\n" if mode == "http" else ""}
            servers = {}
            for tier, backend in backends(sid, svc).items():
                servers[backend] = servers.get(backend, "") + SERVER.format(
                    tier=tier, slots=self.slots,
                    maxconn=" maxconn %d" % maxconn if maxconn else "",
                    backup=" backup" if backend == "be_" + key and tier == "far"
                    else "")
            text += SERVICE.format(
                name=svc["name"], service_id=sid, key=key, port=svc["port"],
                user_expire=USER_EXPIRE_S,
                log=REQUEST_LOG[mode] if self.request_log else "",
                mode=mode, routing=SPILL.format(key=key) if spills(svc) else "",
                backends="".join(BACKEND.format(backend=b, servers=servers[b], **common)
                                 for b in sorted(servers)))
        return text

    def write_config(self, services):
        """Write the config; True if its content changed."""
        text = self.render(services)
        os.makedirs(os.path.dirname(self.config_path), exist_ok=True)
        os.makedirs(os.path.dirname(self.admin_socket), exist_ok=True)
        try:
            with open(self.config_path) as f:
                if f.read() == text:
                    return False
        except OSError:
            pass
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)
        return True

    # -- sockets -------------------------------------------------------
    @staticmethod
    def _send(path, command, timeout=5.0):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode()
        finally:
            s.close()

    def runtime(self, command):
        try:
            return self._send(self.admin_socket, command)
        except OSError as e:
            raise exception.NodeError(
                "HAProxy runtime API at %s is not answering (%s): is "
                "HAProxy running?" % (self.admin_socket, e)) from e

    def alive(self):
        try:
            return "Name: HAProxy" in self._send(self.admin_socket, "show info", 2)
        except OSError:
            return False

    def _worker_pid(self):
        for line in self._send(self.admin_socket, "show info", 1).splitlines():
            if line.startswith("Pid:"):
                return line.split(":", 1)[1].strip()
        return None

    def reload(self, services):
        """Hitless reload; returns once the new worker serves the config.

        The old worker may already have the same backends (a node agent
        restarted with HAProxy running), so "the backends match" alone could
        be answered by the worker on its way out, and the servers then set
        on it instead of the new one: wait for a new worker's pid too.
        """
        try:
            old = self._worker_pid()
            state = self._send(self.admin_socket, "show servers state")
            tmp = self.state_path + ".tmp"
            with open(tmp, "w") as f:
                f.write(state)
            os.replace(tmp, self.state_path)
        except OSError:
            old = None
        try:
            try:
                self._send_master_reload()
            except ConnectionResetError:
                # The master re-executed with our connection unread: for our
                # reload, or for one sent just before (by an agent killed
                # since) that may have read the config before we wrote it.
                # A new worker with our backends says which; else again.
                if self._wait_new_worker(services, old, timeout=3):
                    return
                self._send_master_reload()
            if not self._wait_new_worker(services, old):
                raise exception.NodeError("HAProxy did not come back after a reload")
        finally:
            # Read by the new worker as it started; a later fresh start
            # must not take it (see the module docstring).
            try:
                os.unlink(self.state_path)
            except OSError:
                pass

    def _send_master_reload(self, timeout=10.0):
        """The master re-executes itself on a reload and listens on its
        socket again only after its new worker is forked: a second reload
        right after a first (two services created at once) found the socket
        refusing connections.  Nothing was sent then, so retrying is safe."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._send(self.master_socket, "reload")
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _wait_new_worker(self, services, old, timeout=15):
        """Whether a worker other than ``old`` serves exactly ``services``'
        backends within ``timeout`` seconds."""
        wanted = {b for sid, svc in services.items()
                  for b in backends(sid, svc).values()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out = self._send(self.admin_socket, "show backend", 1)
                have = {line.strip() for line in out.splitlines()[1:]}
                if wanted <= have and not ({b for b in have
                                            if b.startswith(("be_", "bf_"))}
                                           - wanted) and self._worker_pid() != old:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    # -- backends ------------------------------------------------------
    def _slots(self, backend):
        """Current slot -> (addr, admin_state) of a backend."""
        return self._slots_of([backend])[backend]

    def _slots_of(self, names):
        """``_slots`` of several backends in one runtime exchange (a switch
        sets both tiers of a service: one exchange fewer in migration's
        critical window)."""
        out = self.runtime("; ".join("show servers state %s" % b for b in names))
        slots = {b: {} for b in names}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 7 or not parts[0].isdigit() or parts[1] not in slots:
                continue
            # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state
            slots[parts[1]][parts[3]] = (parts[4], int(parts[6]))
        return slots

    def apply(self, services, report=True):
        """Converge HAProxy on the desired per-service server sets; with
        ``report``, return ``status()`` (a migration's switch does not wait
        for it: two more runtime exchanges per service).

        The first apply after the agent starts reloads even when the file
        does not change, and so does every apply after one that could not
        reload (HAProxy not answering, a reload that failed): "the file is
        unchanged" says nothing of what the running HAProxy loaded.  A node
        agent SIGKILLed and restarted writes the empty config at start
        (``NodeAgent.serve``); when the first plan it was sent was empty too
        (every service deleted meanwhile), HAProxy kept listening on the
        deleted services' ports and forwarding to addresses that may by
        then be another tenant's (test_proxy_reload).
        """
        if self.write_config(services):
            self.loaded = False
        if not self.loaded:
            if self.alive():
                t0 = time.monotonic()
                self.reload(services)
                self.loaded = True
                LOG.info("HAProxy reloaded with %d service(s) in %.0f ms", len(services),
                         1000 * (time.monotonic() - t0))
            else:
                LOG.warning("HAProxy is not answering at %s: its configuration is "
                            "written, and loaded at the next plan", self.admin_socket)
        self.services = services
        for sid, svc in services.items():
            self._apply_service(sid, svc)
        return self.status() if report else None

    def _apply_service(self, sid, svc):
        tiers = backends(sid, svc)
        slots = self._slots_of(sorted(set(tiers.values())))
        commands = []
        for tier, backend in tiers.items():
            current = slots[backend]
            wanted = [s["addr"] for s in svc.get(tier, [])]
            draining = {s["addr"] for s in svc.get("draining", [])}
            names = ["%s%d" % (tier, i) for i in range(1, self.slots + 1)]
            by_addr = {current.get(n, ("", 0))[0]: n for n in names
                       if current.get(n, ("", 1))[1] & 1 == 0}
            free = [n for n in names if n not in by_addr.values()]
            assign = {}
            for addr in wanted:
                if addr in by_addr:
                    assign[by_addr.pop(addr)] = addr
                elif free:
                    assign[free.pop(0)] = addr
                else:
                    LOG.warning("%s: more %s instances than slots", backend, tier)
            for name, addr in assign.items():
                if current.get(name, ("",))[0] != addr:
                    commands.append("set server %s/%s addr %s port 8080"
                                    % (backend, name, addr))
                if current.get(name, ("", 0))[1] & ADMIN_FORCED_DRAIN:
                    # Back from drain (a migration rolled back after its
                    # switch): HAProxy 2.6 hands the requests waiting in the
                    # backend's queue to a server leaving maintenance, not
                    # to one leaving drain, and while they wait every new
                    # request queues behind them: none was served until
                    # ``timeout queue`` (test_migrate_rollback).
                    commands.append("set server %s/%s state maint" % (backend, name))
                commands.append("set server %s/%s state ready" % (backend, name))
                commands.append("set server %s/%s health up" % (backend, name))
            # Servers no longer wanted: drain the ones asked to, stop the rest.
            for addr, name in by_addr.items():
                state = "drain" if addr in draining else "maint"
                commands.append("set server %s/%s state %s" % (backend, name, state))
        if commands:
            # One exchange for the whole batch: the runtime API takes
            # ';'-separated commands.
            out = self.runtime("; ".join(commands)).strip()
            for line in out.splitlines():
                if "not found" in line.lower() or "no such" in line.lower() \
                        or "require" in line.lower():
                    raise exception.NodeError("HAProxy refused a command: %s" % line)

    def status(self):
        out = {}
        for sid, svc in self.services.items():
            try:
                stats = [self.runtime("show stat %s -1 -1" % b)
                         for b in sorted(set(backends(sid, svc).values()))]
            except exception.NodeError:
                continue
            servers = []
            for stat in stats:
                for line in stat.splitlines()[1:]:
                    f = line.split(",")
                    if len(f) > 18 and f[1] not in ("BACKEND", "FRONTEND") \
                            and f[17] not in ("MAINT",):
                        servers.append({"name": f[1], "status": f[17],
                                        "addr": f[73] if len(f) > 73 else ""})
            out[sid] = {"port": svc["port"], "servers": servers}
        return out


def proxy_stats(haproxy):
    """``show stat`` as rows keyed by field name, or None when HAProxy does
    not answer."""
    try:
        text = haproxy.runtime("show stat")
    except exception.NodeError as e:
        LOG.warning("proxy stats: %s", e.message)
        return None
    text = text.lstrip("# ")
    import csv  # only while the proxy serves something (0.1 MB)
    return list(csv.DictReader(io.StringIO(text)))
