"""The manager's end of the liveness datagrams (mec_conpaas/liveness.py).

Why not HTTP: at 1,000 nodes heartbeating every 2 s the manager has 500
heartbeats a second to take, and 10 % of one core for them leaves 0.2 ms
each; a Flask request with its JSON, policy check and a committed UPDATE
costs several ms in Python.  A node whose report has not changed needs to
say only "alive", so that is what the datagram says: checking one is an
HMAC and a few dict operations, and what it learns goes to an in-memory
last-seen table that a second thread writes to the store as one batched
UPDATE per ``[liveness] flush_interval``.  Everything else (registration,
the report when it changes, every ``full_report_interval`` anyway) stays
on the HTTP heartbeat, which older agents keep using unchanged.

The keys are the node credentials' digests, read from the store every
``RELOAD_S`` (a revoked credential stops working within that) and when a
beat names a node not yet known (at most once a second).
"""
import datetime
import logging
import socket
import threading
import time

from sqlalchemy import bindparam
from sqlalchemy import select
from sqlalchemy import update

from mec_conpaas import liveness as wire
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import join

LOG = logging.getLogger(__name__)
RELOAD_S = 5.0


def to_db_time(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).replace(
        tzinfo=None)


def from_db_time(dt):
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


class Liveness:
    """The last-seen table and the checks; ``serve`` runs the socket and
    the flusher."""

    def __init__(self, conf, clock=time.time):
        self.conf = conf
        self.clock = clock
        self.keys = {}       # node id -> HMAC key (its credential's digest)
        self.last_seq = {}   # node id -> highest seq accepted
        self.alive_at = {}   # node id -> latest time it is known alive
        self.pending = {}    # node id -> time to write as last_heartbeat
        self.lock = threading.Lock()
        self.counts = {"accepted": 0, "full": 0, "forged": 0, "replayed": 0,
                       "unknown": 0, "malformed": 0, "flushes": 0}
        self._loaded_at = None
        self._unknown_reload_at = 0.0
        self.sock = None

    # -- what the HTTP side tells us ---------------------------------------
    def advertise(self, node_id):
        """Part of an HTTP heartbeat answer: where datagrams go, and the
        manager's clock (the agent stamps beats with it)."""
        if not self.conf.liveness.enabled or self.sock is None:
            return {}
        now = self.clock()
        self.alive_at[node_id] = max(now, self.alive_at.get(node_id, 0.0))
        opts = self.conf.liveness
        every = max(opts.full_report_interval,
                    len(self.keys) / opts.full_reports_per_second)
        return {"liveness": {"port": self.sock.getsockname()[1], "clock": now,
                             "full_report_s": round(every, 1)}}

    # -- checking one datagram ---------------------------------------------
    def handle(self, data):
        """The ack to send back, or None (forged, replayed, unknown,
        malformed: no answer)."""
        head = wire.peek_beat(data)
        if head is None:
            self.counts["malformed"] += 1
            return None
        node_id, seq, sent_us = head
        k = self.keys.get(node_id)
        if k is None:
            self.counts["unknown"] += 1
            now = self.clock()
            if now - self._unknown_reload_at >= 1.0:
                self._unknown_reload_at = now
                self.reload()
                k = self.keys.get(node_id)
            if k is None:
                return None
        if not wire.check_beat(k, data):
            self.counts["forged"] += 1
            return None
        if seq <= self.last_seq.get(node_id, -1):
            self.counts["replayed"] += 1
            return None
        self.last_seq[node_id] = seq
        now = self.clock()
        sent = sent_us / 1e6
        # A node not heard for longer than the manager waits before it acts
        # on a lost node must send its full report first (the manager may
        # have moved its services meanwhile); down for less (a manager
        # restart, a short outage) its report's shape is still what the
        # manager has, which is what an unchanged datagram vouches for.
        opts = self.conf.manager
        limit = max(opts.node_heartbeat_timeout, opts.node_lost_grace)
        if abs(now - sent) > self.conf.liveness.max_age or \
                now - self.alive_at.get(node_id, float("-inf")) > limit:
            # Clock estimate off, or the node long gone (or unknown to the
            # node table): its full report must come first.
            self.counts["full"] += 1
            return wire.ack(k, node_id, seq, wire.FULL)
        sent = min(sent, now)
        if sent > self.alive_at[node_id]:
            self.alive_at[node_id] = sent
            with self.lock:
                self.pending[node_id] = sent
        self.counts["accepted"] += 1
        return wire.ack(k, node_id, seq, wire.OK)

    # -- the store ------------------------------------------------------------
    def reload(self):
        """Keys (node credentials) and when each node was last heard (its
        HTTP heartbeats write that)."""
        with session_scope() as s:
            keys = {}
            for user, digest in s.execute(select(models.Token.user, models.Token.secret_hash)
                                          .where(models.Token.role == "node")):
                if user.startswith(join.NODE_USER):
                    keys[user[len(join.NODE_USER):]] = bytes.fromhex(digest)
            beats = {nid: at for nid, at in s.execute(
                select(models.Node.id, models.Node.last_heartbeat))}
        self.keys = keys
        for nid, dt in beats.items():
            at = from_db_time(dt)
            if at > self.alive_at.get(nid, 0.0):
                self.alive_at[nid] = at
        for nid in set(self.alive_at) - set(beats):  # removed nodes
            self.alive_at.pop(nid, None)
            self.last_seq.pop(nid, None)
        self._loaded_at = self.clock()

    def flush(self):
        """One batched UPDATE for every node heard since the last flush;
        never moves a node's last heartbeat back (an HTTP heartbeat may
        have written a later one)."""
        with self.lock:
            rows, self.pending = self.pending, {}
        if not rows:
            return 0
        stmt = (update(models.Node.__table__)
                .where(models.Node.__table__.c.id == bindparam("nid"),
                       models.Node.__table__.c.last_heartbeat < bindparam("at"))
                .values(last_heartbeat=bindparam("at"), state="up"))
        try:
            with session_scope() as s:
                s.connection().execute(stmt, [{"nid": nid, "at": to_db_time(at)}
                                              for nid, at in rows.items()])
        except Exception:
            with self.lock:  # kept for the next flush, not lost
                for nid, at in rows.items():
                    self.pending[nid] = max(at, self.pending.get(nid, at))
            raise
        self.counts["flushes"] += 1
        return len(rows)

    # -- threads ------------------------------------------------------------
    def open(self):
        """Bind the UDP socket (None if disabled)."""
        opts = self.conf.liveness
        if not (opts.enabled and opts.listen):
            return None
        host = self.conf.api.bind_host
        port = opts.port if opts.port is not None else self.conf.api.bind_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            sock.bind((host, port))
        except OSError as e:
            # Not a reason to stop the manager: agents keep heartbeating
            # over HTTP (no port is advertised).
            sock.close()
            LOG.error("liveness datagrams off: cannot listen on udp %s:%d (%s); "
                      "free the port or set [liveness] port", host, port, e)
            return None
        sock.settimeout(0.5)
        self.sock = sock
        LOG.info("liveness datagrams on udp %s:%d", host, sock.getsockname()[1])
        return sock

    def serve(self, stop):
        if self.open() is None:
            return
        self.reload()
        threading.Thread(target=self._flush_loop, args=(stop,), daemon=True,
                         name="liveness-flush").start()
        threading.Thread(target=self._receive_loop, args=(stop,), daemon=True,
                         name="liveness").start()

    def _receive_loop(self, stop):
        sock = self.sock
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(256)
            except socket.timeout:
                continue
            except OSError as e:
                LOG.warning("liveness socket: %s", e)
                time.sleep(0.1)
                continue
            try:
                reply = self.handle(data)
                if reply is not None:
                    sock.sendto(reply, peer)
            except Exception:
                LOG.exception("liveness datagram from %s", peer)
        sock.close()

    def _flush_loop(self, stop):
        while not stop.wait(self.conf.liveness.flush_interval):
            try:
                self.flush()
                if self.clock() - self._loaded_at >= RELOAD_S:
                    self.reload()
            except Exception:
                LOG.exception("liveness flush")
