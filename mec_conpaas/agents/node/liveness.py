"""The node agent's end of the liveness datagrams (mec_conpaas/liveness.py):
when to send only "alive" and when the full report over HTTP.

A full HTTP heartbeat goes when the manager did not advertise a liveness
port (an older manager, or ``[liveness] enabled = false`` there), when the
report's shape changed (``fingerprint``), every ``[liveness]
full_report_interval``, and when the last beat got no ``OK`` ack (lost,
refused, or the manager wants the full report): so a path that drops UDP
costs an HTTP heartbeat every other interval, never the node's liveness.
"""
import json
import math
import socket
import time
import urllib.parse

from mec_conpaas import liveness as wire


def fingerprint(report):
    """What in a report, when it changes, the manager must learn at once:
    the stations (who is where), each service's users, the containers, their
    sizes and state, the capacity held, and each container's latency in
    √2 bands (auto-scaling's input).  Usage figures (CPU, memory, rates)
    change all the time and wait for the next full report."""
    containers = {}
    for iid, c in (report.get("containers") or {}).items():
        c = c or {}
        ms = c.get("latency_ms")
        containers[iid] = (c.get("state"), c.get("cpus"), c.get("memory_mb"),
                           None if not ms or ms <= 0 else math.floor(2 * math.log2(ms)))
    services = {sid: sorted((s or {}).get("users") or ())
                for sid, s in (report.get("services") or {}).items()}
    stations = sorted((s.get("mac"), s.get("user"), s.get("address"))
                      for s in report.get("stations") or ())
    cap = report.get("capacity") or {}
    return json.dumps([stations, services, containers,
                       [cap.get(k) for k in sorted(cap)]], sort_keys=True, default=str)


class Beacon:
    """Liveness datagrams to one manager, keyed with this node's credential.

    A late ack still counts (a loaded manager answers late, and falling
    back to HTTP then would add the most expensive work where there is the
    least room): the agent goes back to a full HTTP heartbeat only after
    ``MAX_MISSED`` beats in a row without an ack, or at a ``FULL``."""

    MAX_MISSED = 2
    KEEP = 8  # beats whose late ack is still taken

    def __init__(self, node_id, credential, manager_url, port, clock=time.time):
        self.node_id, self.credential, self.port = node_id, credential, port
        self.key = wire.key(credential)
        self.clock = clock
        host = urllib.parse.urlsplit(manager_url).hostname
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.addr = addr
        # Not connected: a multi-homed manager may answer from another of
        # its addresses, and the ack's HMAC says who sent it anyway.
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.offset = 0.0        # manager's clock - ours
        self.offset_rtt = None   # the round trip it was measured over
        self.offset_at = 0.0
        self.seq = int(clock() * 1e6)
        self.pending = []        # seqs of beats not acked yet, oldest first
        self.refused = False     # a FULL ack, or the socket failed
        self.last_full = None    # our clock at the last full report
        self.last_print = None
        self.last_ack = None     # time.monotonic() of the last OK ack
        self.acks = 0            # OK acks received

    def synced(self, manager_clock, sent_at, now, shape):
        """A full report was taken: its answer's clock (``sent_at``/``now``
        bracket the round trip) and the report's fingerprint.

        The clock offset's error is up to half the round trip, and a loaded
        manager's answers can take seconds: as NTP does, the estimate from
        the shortest round trip is kept (a new one replaces it when its
        round trip is no longer, or the kept one is an hour old)."""
        rtt = max(0.0, now - sent_at)
        if self.offset_rtt is None or rtt <= self.offset_rtt or \
                now - self.offset_at > 3600:
            offset = manager_clock - (sent_at + now) / 2
            # The manager's clock read somewhere in [sent_at, now] of ours:
            # when that brackets it, the clocks agree as far as this round
            # trip can tell (NTP-synced, or the same machine), and an
            # offset of half a slow round trip would only make every beat
            # look older than it is (nodes flapping down under load).
            if sent_at <= manager_clock <= now:
                offset = 0.0
            self.offset = offset
            self.offset_rtt, self.offset_at = rtt, now
        self.last_full, self.last_print = now, shape
        self.pending, self.refused = [], False

    def _drain(self):
        while True:
            try:
                data = self.sock.recv(256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.refused = True
                return
            got = wire.read_ack(self.key, self.node_id, data)
            if not got or got[0] not in self.pending:
                continue
            seq, status = got
            self.pending = [p for p in self.pending if p > seq]
            if status != wire.OK:
                self.refused = True
                continue
            self.last_ack = time.monotonic()
            self.acks += 1

    def needs_full(self, shape, interval):
        """Whether this heartbeat must be a full HTTP one."""
        self._drain()
        return (self.refused or len(self.pending) >= self.MAX_MISSED
                or self.last_full is None
                or shape != self.last_print or self.clock() - self.last_full >= interval)

    def beat(self):
        self.seq = max(self.seq + 1, int(self.clock() * 1e6))
        sent_us = int((self.clock() + self.offset) * 1e6)
        self.pending = (self.pending + [self.seq])[-self.KEEP:]
        try:
            self.sock.sendto(wire.beat(self.key, self.node_id, self.seq, sent_us),
                             self.addr)
        except OSError:
            self.refused = True

    def close(self):
        self.sock.close()


def for_answer(beacon, answer, node_id, credential, conf):
    """The beacon a heartbeat answer calls for: kept, made, or None (the
    manager advertises no liveness port, or this agent must not use it)."""
    adv = (answer or {}).get("liveness") or {}
    if not (adv.get("port") and credential and conf.liveness.enabled
            and conf.liveness.full_report_interval > 0):
        if beacon is not None:
            beacon.close()
        return None
    if beacon is not None and (beacon.port, beacon.credential, beacon.node_id) == (
            adv["port"], credential, node_id):
        return beacon
    if beacon is not None:
        beacon.close()
    return Beacon(node_id, credential, conf.node_agent.manager_url, adv["port"])


def full_interval(answer, conf):
    """Seconds between unchanged full reports: what the manager asks for
    (it stretches it with its node count), else ours."""
    adv = (answer or {}).get("liveness") or {}
    return max(conf.liveness.full_report_interval, adv.get("full_report_s") or 0)
