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

Where it runs: in a process of its own (``Receiver``), not a thread of the
API's.  A thread shares the API process's GIL with waitress's loop and its
request threads: when 1,000 agents join, register and send full reports the
API holds the GIL most of the time, datagrams wait in the socket buffer,
their acks come late, agents fall back to HTTP, and that HTTP is more of
the same work (last session's collapsed runs).  The receiver process has
the socket (bound by the manager, so a taken port is the manager's error
to report, and a receiver that dies is started again on the same socket)
and its own connection to the store; it needs from the manager only "this
node just sent a full report" (a message on a SEQPACKET socket pair per
HTTP heartbeat), and sends back its node and datagram counts.  An asyncio
endpoint would not have helped: a blocking ``recvfrom`` loop already costs
nothing while idle, and what it needed was a GIL of its own.  The receiver
exits when the manager does (the socket pair's end, and PDEATHSIG).
"""
import ctypes
import datetime
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from select import POLLIN
from select import poll

from sqlalchemy import bindparam
from sqlalchemy import select
from sqlalchemy import update

from mec_conpaas import liveness as wire
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import join

LOG = logging.getLogger(__name__)
RELOAD_S = 5.0
BEATS_RELOAD_S = 60.0
BATCH_S = 0.05   # s between two drains of the socket (_receive_loop)
BIND_ATTEMPTS = 10  # seconds a restarted manager waits for its port


def bind(conf, attempts=1):
    """The UDP socket on ``[liveness] port`` (None if not listening);
    ``attempts``: seconds to retry a taken port (a restarted manager's
    predecessor's receiver may still be flushing)."""
    opts = conf.liveness
    if not (opts.enabled and opts.listen):
        return None
    host = conf.api.bind_host
    port = opts.port if opts.port is not None else conf.api.bind_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for attempt in range(attempts):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            sock.bind((host, port))
            break
        except OSError as e:
            sock.close()
            if attempt + 1 < attempts:
                time.sleep(1)
                continue
            # Not a reason to stop the manager: agents keep heartbeating
            # over HTTP (no port is advertised).
            LOG.error("liveness datagrams off: cannot listen on udp %s:%d (%s); "
                      "free the port or set [liveness] port", host, port, e)
            return None
    LOG.info("liveness datagrams on udp %s:%d", host, sock.getsockname()[1])
    return sock


def to_db_time(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).replace(
        tzinfo=None)


def from_db_time(dt):
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


def advert(conf, port, now, nodes):
    """Part of an HTTP heartbeat answer: the datagram port, the manager's
    clock (the agent stamps beats with it) and the full-report interval,
    stretched so that ``nodes`` nodes together send at most
    ``full_reports_per_second``."""
    opts = conf.liveness
    every = max(opts.full_report_interval, nodes / opts.full_reports_per_second)
    return {"liveness": {"port": port, "clock": now, "full_report_s": round(every, 1)}}


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
        self.written = {}    # node id -> the last time queued for writing
        # A node's last_heartbeat is written at most this often: what
        # reads it (the monitor, placement's up/down) needs it within the
        # heartbeat timeout, not to the beat (at 1,000 nodes every beat was
        # 500 row updates a second).  A quarter of the timeout keeps a
        # live node's row far from it: beats every 2 s, written at most
        # 2 s + this + a flush apart.
        self.resolution = max(conf.liveness.flush_interval,
                              conf.manager.node_heartbeat_timeout / 4.0)
        self.lock = threading.Lock()
        self.counts = {"accepted": 0, "full": 0, "forged": 0, "replayed": 0,
                       "unknown": 0, "malformed": 0, "flushes": 0}
        self._loaded_at = self._beats_at = None
        self._key_rows = None
        self._unknown_reload_at = 0.0
        self.sock = None

    # -- what the HTTP side tells us ---------------------------------------
    def advertise(self, node_id):
        """Part of an HTTP heartbeat answer: where datagrams go, and the
        manager's clock (the agent stamps beats with it)."""
        if not self.conf.liveness.enabled or self.sock is None:
            return {}
        now = self.clock()
        self.heard(node_id, now)
        return advert(self.conf, self.sock.getsockname()[1], now, len(self.keys))

    def heard(self, node_id, at):
        """The node's full report was taken at ``at``."""
        self.alive_at[node_id] = max(at, self.alive_at.get(node_id, 0.0))

    # -- checking one datagram ---------------------------------------------
    def handle(self, data, now=None):
        """The ack to send back, or None (forged, replayed, unknown,
        malformed: no answer).  ``now``: the clock, if the caller read it."""
        head = wire.peek_beat(data)
        if head is None:
            self.counts["malformed"] += 1
            return None
        node_id, seq, sent_us = head
        if now is None:
            now = self.clock()
        k = self.keys.get(node_id)
        if k is None:
            self.counts["unknown"] += 1
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
            if sent - self.written.get(node_id, 0.0) >= self.resolution:
                self.written[node_id] = sent
                with self.lock:
                    self.pending[node_id] = sent
        self.counts["accepted"] += 1
        return wire.ack(k, node_id, seq, wire.OK)

    # -- the store ------------------------------------------------------------
    def reload(self, beats=True):
        """Keys (node credentials) and, with ``beats``, when each node was
        last heard (its HTTP heartbeats write that; each also reaches this
        process as a note, so the periodic reload reads the times only
        every ``BEATS_RELOAD_S``).  The keys are rebuilt only when their
        rows changed: at 1,000 nodes the whole reload every 5 s was a
        third of a percent of a core."""
        with session_scope() as s:
            rows = s.execute(select(models.Token.user, models.Token.secret_hash)
                             .where(models.Token.role == "node")).all()
            seen = s.execute(select(models.Node.id, models.Node.last_heartbeat)).all() \
                if beats else None
        if rows != self._key_rows:
            keys = {}
            for user, digest in rows:
                if user.startswith(join.NODE_USER):
                    keys[user[len(join.NODE_USER):]] = bytes.fromhex(digest)
            self.keys, self._key_rows = keys, rows
        self._loaded_at = self.clock()
        if seen is None:
            return
        beats = dict(seen)
        for nid, dt in beats.items():
            at = from_db_time(dt)
            if at > self.alive_at.get(nid, 0.0):
                self.alive_at[nid] = at
        for nid in set(self.alive_at) - set(beats):  # removed nodes
            self.alive_at.pop(nid, None)
            self.last_seq.pop(nid, None)
            self.written.pop(nid, None)
        self._beats_at = self._loaded_at

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
        self.sock = bind(self.conf)
        return self.sock

    def serve(self, stop):
        """The receive and flush loops as threads of this process: what the
        receiver process runs (``child_main``), and the unit tests."""
        if self.sock is None and self.open() is None:
            return
        self.reload()
        threading.Thread(target=self._flush_loop, args=(stop,), daemon=True,
                         name="liveness-flush").start()
        threading.Thread(target=self._receive_loop, args=(stop,), daemon=True,
                         name="liveness").start()

    def _receive_loop(self, stop):
        """Wait for the socket to be readable, take every datagram waiting
        in it, then sleep ``BATCH_S``: datagrams that arrive meanwhile wait
        in the socket's buffer and are taken by the next wake-up.  At 500
        datagrams a second a wake-up per datagram (the thread scheduled,
        ``poll``, the GIL taken back) cost more than checking it; an ack
        ``BATCH_S`` later changes nothing for the agent, which reads acks
        only at its next beat, seconds later."""
        sock = self.sock
        sock.setblocking(False)
        poller = poll()
        poller.register(sock, POLLIN)
        while not stop.is_set():
            try:
                if not poller.poll(500):
                    continue
                self.drain(sock)
            except OSError as e:
                LOG.warning("liveness socket: %s", e)
                time.sleep(0.1)
                continue
            time.sleep(BATCH_S)
        sock.close()

    def drain(self, sock, most=4096):
        """Check and answer every datagram waiting in ``sock`` (at most
        ``most``: a flood still lets the loop see ``stop``); returns how
        many were taken.  One clock read for the lot: they all arrived
        within ``BATCH_S`` of it."""
        now = self.clock()
        taken = 0
        while taken < most:
            try:
                data, peer = sock.recvfrom(256)
            except (BlockingIOError, InterruptedError):
                break
            taken += 1
            try:
                reply = self.handle(data, now)
                if reply is not None:
                    sock.sendto(reply, peer)
            except Exception:
                LOG.exception("liveness datagram from %s", peer)
        return taken

    def _flush_loop(self, stop):
        while not stop.wait(self.conf.liveness.flush_interval):
            try:
                self.flush()
                now = self.clock()
                if now - self._loaded_at >= RELOAD_S:
                    self.reload(beats=now - self._beats_at >= BEATS_RELOAD_S)
            except Exception:
                LOG.exception("liveness flush")


# -- the receiver process -----------------------------------------------------
def child_conf(conf):
    """What the receiver process needs of the manager's configuration, as
    resolved (command-line files and overrides alike)."""
    from mec_conpaas.conf import liveness as opts
    from mec_conpaas.db import session as db
    return {"liveness": {o.dest: conf.liveness[o.dest] for o in opts.liveness_opts},
            "manager": {k: conf.manager[k] for k in ("node_heartbeat_timeout",
                                                     "node_lost_grace")},
            "database": {"connection": db.database_url()},
            "DEFAULT": {"debug": conf.debug, "log_file": conf.log_file}}


class Receiver:
    """The manager's side of the receiver process: binds the socket,
    starts (and restarts) the process, forwards "full report taken" notes,
    keeps its counts.  Same ``serve``/``advertise`` as ``Liveness``."""

    def __init__(self, conf, clock=time.time):
        self.conf, self.clock = conf, clock
        self.sock = self.ctl = self.proc = None
        self.running = False
        self.nodes = 0
        self.counts = {}
        self.starts = 0

    def advertise(self, node_id):
        ctl = self.ctl
        if not (self.conf.liveness.enabled and self.running) or ctl is None:
            return {}
        now = self.clock()
        try:  # never wait on the receiver: it reloads from the store anyway
            ctl.send(json.dumps([node_id, now]).encode(), socket.MSG_DONTWAIT)
        except OSError:
            pass
        return advert(self.conf, self.sock.getsockname()[1], now, self.nodes)

    def serve(self, stop):
        opts = self.conf.liveness
        if opts.enabled and opts.listen:
            threading.Thread(target=self._supervise, args=(stop,), daemon=True,
                             name="liveness-receiver").start()

    def _start(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fds = (self.sock.fileno(), theirs.fileno())
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(fds[0]), str(fds[1]), str(os.getpid())],
                pass_fds=fds, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        ours.send(json.dumps({"conf": child_conf(self.conf)}).encode())
        self.starts += 1
        return proc, ours

    def _supervise(self, stop):
        self.sock = bind(self.conf, attempts=BIND_ATTEMPTS)
        if self.sock is None:
            return
        while not stop.is_set():
            try:
                self.proc, ctl = self._start()
            except OSError as e:
                LOG.error("cannot start the liveness receiver: %s", e)
                stop.wait(5)
                continue
            ctl.settimeout(1.0)
            self.ctl = ctl
            while not stop.is_set():
                try:
                    msg = ctl.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    msg = b""
                if not msg:
                    break
                got = json.loads(msg)
                self.nodes, self.counts = got["nodes"], got["counts"]
                self.running = True
            self.running, self.ctl = False, None
            ctl.close()  # the receiver sees the end and exits
            try:
                rc = self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            if not stop.is_set():
                LOG.error("the liveness receiver exited (%s); starting it again", rc)
                stop.wait(1)
        self.sock.close()

    def stop_receiver(self):
        """Kill the receiver process (tests: it is started again)."""
        if self.proc is not None:
            self.proc.kill()


def _die_with(parent):
    try:  # PR_SET_PDEATHSIG: a SIGKILLed manager takes its receiver along
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(0)


def child_main(argv):
    """``python -m mec_conpaas.manager.liveness UDP_FD CTL_FD MANAGER_PID``"""
    udp_fd, ctl_fd, parent = (int(a) for a in argv[:3])
    _die_with(parent)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctl = socket.socket(fileno=ctl_fd)
    settings = json.loads(ctl.recv(65536))
    from mec_conpaas import conf as conf_mod
    from mec_conpaas.cmd import setup_logging
    conf = conf_mod.parse_args([], prog="mec-conpaas-liveness", default_config_files=[])
    for group, opts in settings["conf"].items():
        for k, v in opts.items():
            conf.set_override(k, v, group=None if group == "DEFAULT" else group)
    setup_logging(conf)
    live = Liveness(conf)
    live.sock = socket.socket(fileno=udp_fd)
    stop = threading.Event()
    live.serve(stop)
    LOG.info("liveness receiver %d: %d node key(s)", os.getpid(), len(live.keys))
    ctl.settimeout(1.0)
    reported = 0.0
    try:
        while True:
            now = time.monotonic()
            if now - reported >= 1.0:
                ctl.send(json.dumps({"nodes": len(live.keys),
                                     "counts": live.counts}).encode())
                reported = now
            try:
                msg = ctl.recv(4096)
            except socket.timeout:
                continue
            if not msg:  # the manager is gone
                break
            node_id, at = json.loads(msg)
            live.heard(node_id, at)
    except OSError:
        pass
    finally:
        stop.set()
        try:
            live.flush()
        except Exception:
            LOG.exception("liveness: the last flush")


if __name__ == "__main__":
    child_main(sys.argv[1:])
