"""Which Wi-Fi stations (users) are attached to this access point.

Two sources, one shape.  On a real AP, :class:`HostapdFollower` follows
hostapd's control interface (a unix datagram socket: ``ATTACH``, then
``AP-STA-CONNECTED <mac>`` / ``AP-STA-DISCONNECTED <mac>`` events; the
table is seeded and signal read with ``STA-FIRST`` / ``STA-NEXT`` /
``STA <mac>``).  On the embedded edge, :class:`EmulatedStations` watches
the ports of the client bridge: each emulated user is a veth port whose
alias says ``user=NAME mac=MAC ip=ADDRESS`` (edge/users.py sets it).

Both keep ``{mac: Station}`` and call ``on_change`` (the agent heartbeats
at once) when a station comes or goes, so the manager hears of a
handover within one round trip rather than one heartbeat interval.
"""
import dataclasses
import json
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time

LOG = logging.getLogger(__name__)
CONNECTED = "AP-STA-CONNECTED"
DISCONNECTED = "AP-STA-DISCONNECTED"


@dataclasses.dataclass
class Station:
    mac: str
    since: float  # time.time() of the attachment
    user: str = None
    address: str = None
    signal: int = None  # dBm, where the driver reports it

    def view(self):
        return {"mac": self.mac, "user": self.user or self.mac,
                "address": self.address, "signal": self.signal,
                "since": round(self.since, 3)}


class Table:
    """Stations by MAC; each change calls ``on_change``."""

    def __init__(self, on_change=None):
        self._lock = threading.Lock()
        self._stations = {}
        self.on_change = on_change or (lambda: None)

    def connected(self, mac, **info):
        with self._lock:
            known = self._stations.get(mac)
            if known is None:
                self._stations[mac] = Station(mac, info.pop("since", time.time()), **info)
            else:
                for k, v in info.items():
                    if k != "since":
                        setattr(known, k, v)
        if known is None:
            self.on_change()

    def disconnected(self, mac):
        with self._lock:
            gone = self._stations.pop(mac, None)
        if gone is not None:
            self.on_change()

    def replace(self, found):
        """Make the table ``found`` (``{mac: info}``), keeping the ``since``
        of stations still there."""
        with self._lock:
            before = set(self._stations)
            for mac in before - set(found):
                del self._stations[mac]
            for mac, info in found.items():
                if mac in self._stations:
                    for k, v in info.items():
                        setattr(self._stations[mac], k, v)
                else:
                    self._stations[mac] = Station(mac, time.time(), **info)
            changed = before != set(found)
        if changed:
            self.on_change()

    def snapshot(self):
        with self._lock:
            views = sorted((s.view() for s in self._stations.values()),
                           key=lambda v: v["mac"])
        if any(v["address"] is None for v in views):
            # hostapd knows MACs only: a station's address is in the
            # neighbour table once it has sent anything over IP.
            known = neighbours()
            for v in views:
                v["address"] = v["address"] or known.get(v["mac"])
        return views


def neighbours():
    """``{mac: IPv4 address}`` from this namespace's neighbour table."""
    try:
        res = subprocess.run(["ip", "-4", "-j", "neigh", "show"], capture_output=True,
                             text=True, timeout=5)
        return {n["lladdr"].lower(): n["dst"] for n in json.loads(res.stdout or "[]")
                if n.get("lladdr") and n.get("dst")}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def parse_event(data):
    """``(event, mac)`` of a control-interface event datagram (``<3>`` is
    its priority), or None for events about anything else."""
    text = data.decode("utf-8", "replace").strip()
    if text.startswith("<") and ">" in text:
        text = text.split(">", 1)[1]
    parts = text.split()
    if len(parts) >= 2 and parts[0] in (CONNECTED, DISCONNECTED):
        return parts[0], parts[1].lower()
    return None


def parse_sta(text):
    """``(mac, {key: value})`` of a ``STA``/``STA-FIRST``/``STA-NEXT``
    reply, or None (``FAIL``, or no more stations)."""
    lines = text.strip().splitlines()
    if not lines or lines[0] in ("FAIL", "") or ":" not in lines[0]:
        return None
    fields = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    return lines[0].strip().lower(), fields


def _signal(fields):
    try:
        return int(fields["signal"])
    except (KeyError, ValueError):
        return None


class ControlSocket:
    """One client of hostapd's control interface (as wpa_ctrl.c is): a
    datagram socket bound to a path of ours, connected to hostapd's."""

    def __init__(self, path, timeout=2.0):
        self.dir = tempfile.mkdtemp(prefix="mec-hostapd-")
        self.local = os.path.join(self.dir, "ctrl")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(self.local)
            self.sock.connect(path)
        except OSError:
            self.close()
            raise
        self.sock.settimeout(timeout)

    def request(self, command):
        self.sock.send(command.encode())
        while True:
            reply = self.sock.recv(65536)
            if not reply.startswith(b"<"):  # an event, not our reply
                return reply.decode("utf-8", "replace")

    def close(self):
        self.sock.close()
        for p in (self.local, self.dir):
            try:
                os.rmdir(p) if p == self.dir else os.unlink(p)
            except OSError:
                pass


class HostapdFollower:
    """Follows one hostapd control socket (``[node_agent]
    hostapd_ctrl_interface``).  hostapd may start after us or restart: we
    reconnect every ``retry`` seconds and re-read the whole table, so a
    station that came or went meanwhile is not missed."""

    def __init__(self, path, table, retry=1.0):
        self.path = path
        self.table = table
        self.retry = retry
        self.stop = threading.Event()
        self.connected = threading.Event()

    def start(self):
        threading.Thread(target=self.run, daemon=True, name="hostapd").start()
        return self

    def sweep(self, ctrl):
        found = {}
        reply = parse_sta(ctrl.request("STA-FIRST"))
        while reply is not None and reply[0] not in found:
            mac, fields = reply
            found[mac] = {"signal": _signal(fields)}
            reply = parse_sta(ctrl.request("STA-NEXT " + mac))
        self.table.replace(found)

    def signal(self, mac):
        """Refresh one station's signal (the agent does before it reports)."""
        try:
            ctrl = ControlSocket(self.path)
        except OSError:
            return None
        try:
            reply = parse_sta(ctrl.request("STA " + mac))
        except OSError:
            return None
        finally:
            ctrl.close()
        return _signal(reply[1]) if reply else None

    def run(self):
        while not self.stop.is_set():
            mon = None
            try:
                mon = ControlSocket(self.path)
                if mon.request("ATTACH").strip() != "OK":
                    raise OSError("hostapd refused ATTACH")
                # Events from now on wait on ``mon``; the table is read on
                # another socket, so none is lost or taken for a reply.
                ctrl = ControlSocket(self.path)
                try:
                    self.sweep(ctrl)
                finally:
                    ctrl.close()
                self.connected.set()
                mon.sock.settimeout(self.retry)
                idle = 0.0
                while not self.stop.is_set():
                    try:
                        event = parse_event(mon.sock.recv(65536))
                    except socket.timeout:
                        idle += self.retry
                        if idle >= 10 * self.retry:  # hostapd gone quietly?
                            if mon.request("PING").strip() != "PONG":
                                raise OSError("hostapd did not answer PING")
                            idle = 0.0
                        continue
                    idle = 0.0
                    if event is None:
                        continue
                    kind, mac = event
                    if kind == CONNECTED:
                        self.table.connected(mac, signal=self.signal(mac))
                    else:
                        self.table.disconnected(mac)
            except OSError as e:
                if self.connected.is_set():
                    LOG.warning("hostapd control interface %s: %s; reconnecting",
                                self.path, e)
                self.connected.clear()
            finally:
                if mon is not None:
                    mon.close()
            self.stop.wait(self.retry)


def _die_with_parent():
    """The monitor goes when the agent does, even by SIGKILL (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def parse_alias(alias):
    """``{"user", "mac", "ip"}`` from an emulated user's port alias."""
    out = dict(w.split("=", 1) for w in (alias or "").split() if "=" in w)
    return out if "user" in out else None


class EmulatedStations:
    """Emulated users are the ports of the client bridge (``[node_agent]
    emulated_station_bridge``) whose alias names a user.  ``ip monitor
    link`` says when a link changes in this namespace (a port moved in or
    out, enslaved or released); the ports are listed again then, and every
    ``interval`` s in case the monitor itself died."""

    def __init__(self, bridge, table, interval=5.0, ip=("ip",)):
        self.bridge = bridge
        self.table = table
        self.interval = interval
        self.ip = list(ip)
        self.stop = threading.Event()
        self.changed = threading.Event()

    def start(self):
        threading.Thread(target=self.run, daemon=True, name="stations").start()
        threading.Thread(target=self.monitor, daemon=True, name="stations-mon").start()
        return self

    def poll(self):
        res = subprocess.run(self.ip + ["-j", "-d", "link", "show", "master", self.bridge],
                             capture_output=True, text=True)
        if res.returncode:
            return
        found = {}
        for link in json.loads(res.stdout or "[]"):
            info = parse_alias(link.get("ifalias"))
            if info and link.get("operstate") != "DOWN":
                found[info.get("mac", link["ifname"])] = {
                    "user": info["user"], "address": info.get("ip")}
        self.table.replace(found)

    def monitor(self):
        while not self.stop.is_set():
            try:
                proc = subprocess.Popen(self.ip + ["-o", "monitor", "link"],
                                        stdout=subprocess.PIPE, text=True,
                                        preexec_fn=_die_with_parent)
            except OSError as e:
                LOG.warning("ip monitor link: %s", e)
                self.stop.wait(self.interval)
                continue
            for _line in proc.stdout:
                self.changed.set()
                if self.stop.is_set():
                    break
            proc.kill()
            proc.wait()
            self.stop.wait(1.0)

    def run(self):
        while not self.stop.is_set():
            try:
                self.poll()
            except (OSError, ValueError) as e:
                LOG.warning("listing the ports of %s failed: %s", self.bridge, e)
            self.changed.wait(self.interval)
            self.changed.clear()


def from_conf(conf, on_change=None):
    """``(table, follower or None)`` as the node agent's options say."""
    opts = conf.node_agent
    table = Table(on_change)
    if opts.hostapd_ctrl_interface:
        return table, HostapdFollower(opts.hostapd_ctrl_interface, table).start()
    if opts.emulated_station_bridge:
        return table, EmulatedStations(opts.emulated_station_bridge, table).start()
    return table, None


def _table_entries(text):
    """``show table`` lines as ``{"key", "exp", ...}`` dicts."""
    out = []
    for line in text.splitlines():
        if not line.startswith("0x"):
            continue
        fields = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
        if "key" in fields:
            out.append(fields)
    return out


def service_report(haproxy, rows):
    """Per service this AP proxies: request rate, the near tier's response
    time (HAProxy's average over its last 1,024 requests) and which users
    (source addresses, with seconds since their last connection) sent to
    it within the stick table's expiry.  ``rows``: metrics.proxy_stats."""
    from mec_conpaas.agents.node import haproxy as haproxy_mod
    by_name = {(r.get("pxname"), r.get("svname")): r for r in rows or ()}
    out = {}
    for sid, svc in sorted(haproxy.services.items()):
        key = haproxy_mod._key(sid)
        fe = by_name.get(("fe_" + key, "FRONTEND"), {})
        be = by_name.get(("be_" + key, "BACKEND"), {})
        mode_http = svc.get("mode", "http") == "http"
        try:
            entries = _table_entries(haproxy.runtime("show table fe_" + key))
        except Exception:  # HAProxy down or reloading: report what we have
            entries = []
        users = {}
        for e in entries:
            try:
                idle = haproxy_mod.USER_EXPIRE_S - int(e.get("exp", 0)) / 1000.0
            except ValueError:
                idle = None
            users[e["key"]] = round(idle, 1) if idle is not None else None

        def num(row, field):
            try:
                return float(row.get(field) or 0)
            except ValueError:
                return 0.0
        out[sid] = {"name": svc.get("name"),
                    "request_rate": num(fe, "req_rate" if mode_http else "rate"),
                    "requests": num(fe, "req_tot" if mode_http else "stot"),
                    "response_ms": num(be, "rtime" if mode_http else "ttime"),
                    "users": users}
    return out
