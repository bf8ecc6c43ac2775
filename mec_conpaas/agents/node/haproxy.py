"""The access point's stable service endpoints (PiCasso's service proxy).

Every service has one frontend on a fixed port and one backend with two
tiers of server slots: ``near`` (instances nearest to this access point)
and ``far`` (``backup`` servers, used only when no near instance is
healthy).  Moving instances between slots, draining and disabling go
through HAProxy's runtime API; only adding or removing a service (a
frontend) rewrites the configuration, with a hitless master-worker reload.
"""
import logging
import os
import socket
import time

from mec_conpaas import exception

LOG = logging.getLogger(__name__)
TIERS = ("near", "far")

GLOBAL = """\
# Written by mec-conpaas-node-agent; edits are overwritten.
global
    stats socket {admin} mode 600 level admin expose-fd listeners
    stats timeout 10s
    maxconn 4096
    hard-stop-after 30s

defaults
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout queue 10s
    timeout check 1s
    retries 3
    option redispatch 1
    default-server inter 300ms fastinter 200ms downinter 300ms rise 1 fall 2
"""

SERVICE = """
# service {name} ({service_id})
frontend fe_{key}
    mode {mode}
    bind :{port}
    default_backend be_{key}

backend be_{key}
    mode {mode}
    balance roundrobin
    option httpchk GET /health
{close}
    http-check expect status 200
{retry}    server-template near {slots} 0.0.0.0:8080 check port 8999 disabled
    server-template far {slots} 0.0.0.0:8080 check port 8999 disabled backup
"""


def _key(service_id):
    return service_id.replace("-", "")[:12]


class HAProxy:

    def __init__(self, conf):
        opts = conf.node_agent
        self.config_path = opts.haproxy_config
        self.admin_socket = opts.haproxy_admin_socket
        self.master_socket = opts.haproxy_master_socket
        self.slots = opts.proxy_slots
        self.services = {}

    # -- configuration -------------------------------------------------
    def render(self, services):
        text = GLOBAL.format(admin=self.admin_socket)
        for sid in sorted(services):
            svc = services[sid]
            mode = "http" if svc.get("mode", "http") == "http" else "tcp"
            retry = ("    retry-on conn-failure empty-response "
                     "response-timeout\n" if mode == "http" else "")
            close = "    option http-server-close\n" if mode == "http" else ""
            text += SERVICE.format(name=svc["name"], service_id=sid, close=close,
                                   key=_key(sid), mode=mode, port=svc["port"],
                                   slots=self.slots, retry=retry)
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

    def reload(self, services):
        """Hitless reload; returns once the new worker serves the config."""
        self._send(self.master_socket, "reload")
        wanted = {"be_" + _key(s) for s in services}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                out = self._send(self.admin_socket, "show backend", 1)
                have = {line.strip() for line in out.splitlines()[1:]}
                if wanted <= have and not ({b for b in have if b.startswith("be_")}
                                           - wanted):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise exception.NodeError("HAProxy did not come back after a reload")

    # -- backends ------------------------------------------------------
    def _slots(self, key):
        """Current slot -> (addr, admin_state) of a backend."""
        out = self.runtime("show servers state be_%s" % key)
        slots = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 7 or parts[0].startswith("#") or not parts[0].isdigit():
                continue
            # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state
            slots[parts[3]] = (parts[4], int(parts[6]))
        return slots

    def apply(self, services):
        """Converge HAProxy on the desired per-service server sets."""
        changed = self.write_config(services)
        if changed or set(services) != set(self.services):
            if self.alive():
                self.reload(services)
        self.services = services
        for sid, svc in services.items():
            self._apply_backend(_key(sid), svc)
        return self.status()

    def _apply_backend(self, key, svc):
        backend = "be_" + key
        current = self._slots(key)
        commands = []
        for tier in TIERS:
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
        for sid in self.services:
            key = _key(sid)
            try:
                stat = self.runtime("show stat be_%s -1 -1" % key)
            except exception.NodeError:
                continue
            servers = []
            for line in stat.splitlines()[1:]:
                f = line.split(",")
                if len(f) > 18 and f[1] not in ("BACKEND", "FRONTEND") \
                        and f[17] not in ("MAINT",):
                    servers.append({"name": f[1], "status": f[17],
                                    "addr": f[73] if len(f) > 73 else ""})
            out[sid] = {"port": self.services[sid]["port"], "servers": servers}
        return out
