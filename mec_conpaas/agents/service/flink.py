#!/usr/bin/python3
"""The ``flink`` service type: what a Flink instance runs when its bundle has
no run.sh of its own.

The service's master instance is the JobManager, every other instance a
TaskManager (so scaling adds or removes TaskManagers).  The master also
runs the job's *gateway*, the one thing users talk to through the
service's endpoint:

* ``POST /frames`` (lines ``ID BASE64``): records in; each is kept in the
  state directory until its result is in;
* the job's source connects to the gateway's feed port and gets every
  record without a result yet, then new ones as they come: after any
  restart of the job (rescaling, a TaskManager lost, the JobManager
  migrated) the records in flight are replayed, so none is lost;
* ``POST /results`` (one JSON object per line, with ``id``): the job's
  sink; a second result for the same record (a replay of one whose result
  was in flight) is counted and dropped, so none is seen twice;
* ``GET /detections?from=N``: results in the order they arrived;
  ``&wait=S``: held until there is one from the N-th on (at most S s,
  10 at most), so a user reads each as it comes without polling.

The endpoint is the gateway alone: a TaskManager's service agent tells the
access points' HAProxy it serves nothing (agent.py), and tells the manager
it is healthy while its TaskManager runs.  A TaskManager's JobManager is
the first address in the peers file (the manager lists the master first);
it waits for one, and restarts when it changes (the master migrated).

Runs with the image's stdlib ``python3``; Flink runs from the
``apache-flink`` distribution in the image's ``/opt/flink`` venv (see
``mec_conpaas/edge/flink_image.py``), the job's Python with that venv.
"""
import errno
import glob
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import time
import urllib.request

VENV = os.environ.get("MEC_FLINK_VENV", "/opt/flink")
APP_DIR = os.environ.get("MEC_APP_DIR", "/srv/app")
STATE_DIR = os.environ.get("MEC_STATE_DIR", "/var/lib/service")
RUN_DIR = os.environ.get("MEC_RUN_DIR", "/run/mec")
PEERS_FILE = os.environ.get("PEERS_FILE", os.path.join(RUN_DIR, "peers"))
APP_PORT = int(os.environ.get("MEC_APP_PORT", "8080"))
FEED_PORT = 9000
# After a stop-with-savepoint, the migration freezes this instance within
# seconds; if it has not by then, the move failed: run the job again.
PAUSE_AFTER_SAVEPOINT = 120
# How long a migration's savepoint may take in all, waiting for a
# restarting job to run again included (within the service agent's 80 s).
SAVEPOINT_BUDGET = 70
# How long the gateway waits for the results of records out to the job
# before a savepoint (holding new ones back meanwhile).
SAVEPOINT_DRAIN = 8
REST_PORT = 8081
# frames.log is rewritten with only the records still owed a result once
# this many answered ones are in it: a record with its result is never fed
# again, and the state directory (copied whole by every migration) would
# otherwise grow by every frame ever sent (~20 KB each).
COMPACT_AFTER = 50
# The longest ``GET /detections?wait=S`` holds a request (within HAProxy's
# 60 s server timeout, and short enough that a poll held by a JobManager
# frozen for a migration ends soon after the switch).
MAX_WAIT = 10.0
# Sized for a Pi (README "Flink and the far cloud"): the smallest settings
# the face-recognition job ran with, overridable per bundle (flink.conf).
MEMORY = {"jobmanager.memory.process.size": "448m",
          "jobmanager.memory.jvm-metaspace.size": "96m",
          "jobmanager.memory.jvm-overhead.min": "64m",
          "jobmanager.memory.off-heap.size": "64m",
          "taskmanager.memory.process.size": "448m",
          "taskmanager.memory.managed.size": "96m",
          "taskmanager.memory.framework.heap.size": "64m",
          "taskmanager.memory.network.min": "16m",
          "taskmanager.memory.network.max": "16m",
          "taskmanager.memory.jvm-metaspace.size": "128m",
          "taskmanager.memory.jvm-overhead.min": "64m",
          "taskmanager.memory.framework.off-heap.size": "32m",
          "taskmanager.memory.task.off-heap.size": "0m"}


def log(text):
    sys.stdout.write("[mec-flink] %s\n" % text)
    sys.stdout.flush()


def dies_with_us(argv):
    """``argv`` run so that the kernel kills it when this process dies,
    however it dies (``setpriv --pdeathsig``, util-linux, in every Debian).

    The JVMs run in sessions of their own (a TaskManager is restarted as a
    group when its JobManager moves), so a SIGKILL to this process's group
    does not reach them, and the service agent sends one when a migration's
    target takes up the state (``restore prepare``, agent.py).  A
    JobManager left behind that way kept ports 6123/8081: the next one
    could not bind, exited, and the job restarted over and over on the
    orphan, fed by gateways that kept dying with it (the "restore loop" of
    session 7)."""
    setpriv = shutil.which("setpriv")
    return ([setpriv, "--pdeathsig", "KILL"] if setpriv else []) + argv


def flink_home():
    found = glob.glob(os.path.join(VENV, "lib", "python3*", "site-packages", "pyflink"))
    if not found:
        raise SystemExit("no Flink in %s: this instance was not started from the "
                         "flink image (mec-conpaas-edge build-image --flink)" % VENV)
    return found[0]


class PlantedLink(SystemExit):
    """A link (or other non-regular file) where the gateway keeps its own
    files: refused, never followed."""


def own_dir(path):
    """``path`` as a directory of our own: created if missing; refused if a
    link or anything but a directory is there.

    The state directory is the tenant's too (the job runs as the same
    user) and arrives by copy with every migration, so what is in it is
    not trusted: nothing here follows a link in it (whatever runs this:
    the instance's root, or root on a host for bench/stream.py's floor).
    The last component is what is checked; its parents are this process's
    own choice (``MEC_STATE_DIR`` and the names below)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PlantedLink("%s is not a directory (%s): the flink gateway keeps its "
                          "records there; remove it from the service's state" % (
                              path, "a link" if stat.S_ISLNK(st.st_mode) else
                              "mode %o" % st.st_mode))
    return path


def open_own(directory, name, flags):
    """``directory/name`` opened without following a link at either
    (O_NOFOLLOW from the directory's descriptor), and only if a regular
    file: PlantedLink otherwise.  Returns a file object (text)."""
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # O_NONBLOCK: a FIFO planted there must not hang the open (no
        # effect on a regular file's reads and writes)
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600,
                     dir_fd=dirfd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PlantedLink("%s/%s is a link: the flink gateway refuses to follow "
                              "it; remove it from the service's state" % (
                                  directory, name)) from None
        raise
    finally:
        os.close(dirfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PlantedLink("%s/%s is not a regular file: remove it from the "
                          "service's state" % (directory, name))
    mode = "r" if flags & os.O_ACCMODE == os.O_RDONLY else (
        "a" if flags & os.O_APPEND else "w")
    return os.fdopen(fd, mode)


class Gateway:
    """Records in, results out, with replay; its state survives restarts
    and migrations (files in ``state_dir``, opened with :func:`open_own`)."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.lock = threading.Condition()
        self.frames = {}      # id -> line, no result yet
        self.order = []       # ids as they came
        self.results = []     # result lines, in arrival order
        self.done = set()
        self.duplicates = 0
        self.received = 0
        self.held = False     # no record out to the job (a savepoint is taken)
        self.hold_reads = True  # a read may wait for a result (results_from)
        self.savepoint = None  # the last one taken: its path, results before it
        self.feeds = []       # per live feed connection: ids sent on it
        self.logged = 0       # record lines in frames.log
        self.compacted = 0    # records received before frames.log's lines
        os.makedirs(os.path.dirname(state_dir), exist_ok=True)
        own_dir(state_dir)
        self._load()
        append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self.frames_log = open_own(state_dir, "frames.log", append)
        self.results_log = open_own(state_dir, "results.log", append)

    def _load(self):
        try:
            with open_own(self.state_dir, "results.log", os.O_RDONLY) as f:
                for line in f:
                    if line.endswith("\n"):
                        rid = json.loads(line)["id"]
                        if rid not in self.done:
                            self.done.add(rid)
                            self.results.append(line.rstrip("\n"))
        except OSError:
            pass
        try:
            with open_own(self.state_dir, "received", os.O_RDONLY) as f:
                self.compacted = self.received = int(f.read().strip() or 0)
        except (OSError, ValueError):
            pass
        try:
            with open_own(self.state_dir, "frames.log", os.O_RDONLY) as f:
                for line in f:
                    if line.endswith("\n"):
                        rid = line.split(" ", 1)[0]
                        self.received += 1
                        self.logged += 1
                        if rid not in self.done and rid not in self.frames:
                            self.frames[rid] = line.rstrip("\n")
                            self.order.append(rid)
        except OSError:
            pass
        try:
            with open_own(self.state_dir, "savepoint.json", os.O_RDONLY) as f:
                self.savepoint = json.load(f)
        except (OSError, ValueError):
            pass

    def note_savepoint(self, path):
        """Which savepoint the job stopped with, and how many results were
        in then (the ones before it: its state counts their records); kept
        with the records, so the target of a migration has it too."""
        with self.lock:
            self.savepoint = {"path": path, "results": len(self.results)}
            with open_own(self.state_dir, "savepoint.json",
                          os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as f:
                json.dump(self.savepoint, f)

    def add_frames(self, lines):
        with self.lock:
            for line in lines:
                rid = line.split(" ", 1)[0]
                if not rid or rid in self.done or rid in self.frames:
                    continue
                self.frames_log.write(line + "\n")
                self.frames[rid] = line
                self.order.append(rid)
                self.received += 1
                self.logged += 1
            self.frames_log.flush()
            self.lock.notify_all()

    def add_results(self, lines):
        with self.lock:
            for line in lines:
                rid = json.loads(line)["id"]
                if rid in self.done:
                    self.duplicates += 1
                    continue
                self.done.add(rid)
                self.frames.pop(rid, None)
                self.results.append(line)
                self.results_log.write(line + "\n")
            self.results_log.flush()
            if lines:  # a job runs here (again): reads may wait for it
                self.hold_reads = True
            if self.logged - len(self.frames) >= COMPACT_AFTER:
                self._compact()
            self.lock.notify_all()  # a hold() draining

    def _compact(self):
        """frames.log with only the records owed a result (the caller
        holds the lock; results.log is flushed, so a record left out has
        its result on disk).  ``received`` first, then the new log renamed
        over the old, both within the state directory's descriptor: a crash
        between the two counts the answered records twice in ``received``
        (a statistic), never loses one owed a result."""
        received = self.received - len(self.frames)
        with open_own(self.state_dir, "received.tmp",
                      os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as f:
            f.write("%d\n" % received)
            f.flush()
            os.fsync(f.fileno())
        with open_own(self.state_dir, "frames.log.tmp",
                      os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as f:
            f.writelines(self.frames[i] + "\n" for i in self.order if i in self.frames)
            f.flush()
            os.fsync(f.fileno())
        dirfd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:  # a rename replaces a planted link, never follows it
            os.rename("received.tmp", "received", src_dir_fd=dirfd, dst_dir_fd=dirfd)
            os.rename("frames.log.tmp", "frames.log", src_dir_fd=dirfd, dst_dir_fd=dirfd)
        finally:
            os.close(dirfd)
        self.frames_log.close()
        self.frames_log = open_own(self.state_dir, "frames.log",
                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self.compacted, self.logged = received, len(self.frames)

    def pending(self):
        with self.lock:
            self.order = [i for i in self.order if i in self.frames]
            return list(self.order)

    def feed(self, conn):
        """Send the job's source every record without a result, then new
        ones as they come, until the connection breaks."""
        sent = set()
        with self.lock:
            self.feeds.append(sent)
        try:
            with conn:
                while True:
                    with self.lock:
                        todo = [] if self.held else [
                            self.frames[i] for i in self.order
                            if i in self.frames and i not in sent]
                        if not todo:
                            self.lock.wait(0.5)
                            continue
                        sent.update(line.split(" ", 1)[0] for line in todo)
                    try:
                        conn.sendall("".join(x + "\n" for x in todo).encode())
                    except OSError:
                        return
        finally:
            with self.lock:
                self.feeds.remove(sent)

    def hold(self, drain):
        """Send the job nothing more, and wait up to ``drain`` s for the
        results of what it was sent: a savepoint taken then holds the state
        of every record whose result is in, and no record is processed
        after its barrier (whose effect on the job's state the savepoint
        would lose).  Returns the records still out (0 once drained)."""
        deadline = time.monotonic() + drain
        with self.lock:
            self.held = True
            while True:
                out = sum(1 for sent in self.feeds for i in sent if i in self.frames)
                if not out or time.monotonic() > deadline:
                    return out
                self.lock.wait(0.1)

    def release(self):
        with self.lock:
            self.held = False
            self.lock.notify_all()

    def results_from(self, start, wait=0.0):
        """Results from the ``start``-th on; with ``wait`` > 0, once there
        is one, or after ``wait`` s with none (a long poll: the user sees a
        detection as it arrives, instead of at its next poll, and asks
        over its Wi-Fi hop and the proxy once per answer rather than
        every few ms)."""
        deadline = time.monotonic() + wait
        with self.lock:
            while len(self.results) <= start and self.hold_reads:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.lock.wait(left)
            return self.results[start:]

    def stop_holding_reads(self):
        """Answer every held read now, and hold none until a result comes:
        the job stopped with a savepoint and this instance is about to be
        frozen, whose freeze waits (up to a second, migration's
        quiescence check) for every request it has read to be answered."""
        with self.lock:
            self.hold_reads = False
            self.lock.notify_all()

    def stats(self):
        with self.lock:
            return {"received": self.received, "results": len(self.results),
                    "pending": len(self.frames), "duplicates_dropped": self.duplicates,
                    "savepoint": self.savepoint}


def gateway_handler(gw, flink_status=lambda: {}, savepoint=None):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            path, _, query = self.path.partition("?")
            if path == "/detections":
                params = dict(p.partition("=")[::2] for p in query.split("&") if p)
                try:
                    start = int(params.get("from", "0"))
                    wait = min(float(params.get("wait", "0")), MAX_WAIT)
                    if not wait >= 0:  # negative, or nan
                        raise ValueError(wait)
                except ValueError:
                    return self._send(400, {"error": "from must be an integer and "
                                                     "wait a number of seconds"})
                res = gw.results_from(start, wait)
                return self._send(200, {"from": start, "detections": [
                    json.loads(x) for x in res]})
            if path in ("/", "/stats"):
                # a copy: the JobManager's watcher updates it meanwhile
                return self._send(200, dict(gw.stats(), flink=dict(flink_status())))
            self._send(404, {"error": "GET /detections?from=N or /stats"})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            if self.path == "/savepoint" and savepoint is not None:
                if self.client_address[0] != "127.0.0.1":  # the service agent only
                    return self._send(403, {"error": "only from this instance"})
                return self._send(200, savepoint())
            lines = [x for x in body.split("\n") if x.strip()]
            try:
                if self.path == "/frames":
                    gw.add_frames(lines)
                elif self.path == "/results":
                    gw.add_results(lines)
                else:
                    return self._send(404, {"error": "POST /frames or /results"})
            except (ValueError, KeyError) as e:
                return self._send(400, {"error": "bad line: %s" % e})
            self._send(200, {"accepted": len(lines)})
    return Handler


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):  # no reverse DNS lookup (see agent.py)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]


def serve_gateway(gw, host, port, feed_port, flink_status=lambda: {}, savepoint=None):
    """Start the gateway's HTTP and feed servers; returns the HTTP server."""
    httpd = _Server((host, port), gateway_handler(gw, flink_status, savepoint))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    feed = socket.create_server((host, feed_port), reuse_port=False)

    def accept():
        while True:
            conn, _ = feed.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=gw.feed, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    return httpd


def write_conf(home, conf_dir, settings):
    """Flink's configuration: the distribution's, with this instance's
    addresses, Pi-sized memory and the bundle's ``flink.conf`` on top."""
    os.makedirs(conf_dir, exist_ok=True)
    for name in os.listdir(os.path.join(home, "conf")):
        if name.startswith("log4j"):
            with open(os.path.join(home, "conf", name)) as src, \
                    open(os.path.join(conf_dir, name), "w") as dst:
                dst.write(src.read())
    extra = {}
    try:
        with open(os.path.join(APP_DIR, "flink.conf")) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and not line.lstrip().startswith("#"):
                    extra[key.strip()] = value.strip()
    except OSError:
        pass
    java_opts = " ".join("--add-opens=java.base/%s=ALL-UNNAMED" % p for p in (
        "java.lang", "java.util", "java.io", "java.net", "java.nio", "sun.nio.ch",
        "java.lang.reflect", "java.text", "java.time", "java.util.concurrent",
        "java.util.concurrent.atomic", "java.util.concurrent.locks"))
    merged = dict(MEMORY)
    merged.update({"env.java.opts.all": java_opts,
                   "python.executable": os.path.join(VENV, "bin", "python"),
                   "python.client.executable": os.path.join(VENV, "bin", "python"),
                   "taskmanager.numberOfTaskSlots": "1",
                   "jobmanager.scheduler": "adaptive",
                   "restart-strategy.type": "fixed-delay",
                   "restart-strategy.fixed-delay.attempts": "1000000",
                   "restart-strategy.fixed-delay.delay": "1 s",
                   "heartbeat.timeout": "20000",
                   # rescale soon after a TaskManager comes or goes
                   "jobmanager.adaptive-scheduler.scaling-interval.min": "5 s",
                   "jobmanager.adaptive-scheduler.resource-stabilization-timeout": "3 s",
                   "blob.server.port": "6124",
                   "jobmanager.rpc.port": "6123",
                   "taskmanager.rpc.port": "6122",
                   "taskmanager.data.port": "6121",
                   "rest.port": str(REST_PORT)})
    merged.update(settings)
    merged.update(extra)
    with open(os.path.join(conf_dir, "config.yaml"), "w") as f:
        for k, v in merged.items():
            f.write("%s: %s\n" % (k, json.dumps(v)))


def rest(ip, path, timeout=3):
    with urllib.request.urlopen("http://%s:%d%s" % (ip, REST_PORT, path),
                                timeout=timeout) as resp:
        return json.loads(resp.read())


def rest_post(path, body, timeout=10):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (REST_PORT, path),
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def job_file():
    for name in ("job.py",):
        if os.path.isfile(os.path.join(APP_DIR, name)):
            return ["-py", os.path.join(APP_DIR, name)]
    jars = sorted(glob.glob(os.path.join(APP_DIR, "*.jar")))
    if jars:
        return [jars[0]]
    raise SystemExit("the bundle has neither job.py nor a .jar")


def run_jobmanager(home, env, my_ip):
    conf_dir = os.path.join(RUN_DIR, "flink-conf")
    write_conf(home, conf_dir, {"jobmanager.rpc.address": my_ip,
                                "jobmanager.bind-host": "0.0.0.0",
                                "rest.address": my_ip,
                                "rest.bind-address": "0.0.0.0"})
    env = dict(env, FLINK_CONF_DIR=conf_dir)
    status = {}
    paused = {"until": 0.0}
    consumed = {"path": None}
    savepoints = os.path.join(STATE_DIR, "savepoints")

    def savepoint():
        """Stop the job with a savepoint into the state directory (a
        migration's final copy carries it); no new submission for a while,
        unless the move fails."""
        t0 = time.monotonic()
        deadline = t0 + SAVEPOINT_BUDGET
        tries = []
        try:
            while True:
                # A job being rescaled (a TaskManager just came or went)
                # restarts, and Flink refuses a savepoint until every task
                # runs again (the Python workers take seconds to start):
                # wait for that rather than move without a savepoint.
                jid, why = running_job()
                if jid is None:
                    if time.monotonic() > deadline:
                        return {"savepoint": None, "detail": why,
                                "failed_tries": tries}
                    time.sleep(0.5)
                    continue
                paused["until"] = time.monotonic() + PAUSE_AFTER_SAVEPOINT
                out = gw.hold(SAVEPOINT_DRAIN)
                path, failure = take_savepoint(jid, deadline)
                if path:
                    try:
                        gw.note_savepoint(path)
                    except (PlantedLink, OSError) as e:
                        log("cannot note the savepoint: %s" % e)
                    log("job %s stopped with savepoint %s in %.1f s (%d record(s) "
                        "still out; earlier tries: %s)" % (
                            jid, path, time.monotonic() - t0, out, tries or "none"))
                    return {"savepoint": path, "seconds": round(time.monotonic() - t0, 1),
                            "records_out": out, "failed_tries": tries}
                tries.append(failure)
                log("savepoint of job %s failed: %s" % (jid, failure))
                gw.release()
                if time.monotonic() > deadline:
                    paused["until"] = 0.0
                    return {"savepoint": None, "detail": "; ".join(tries)}
                time.sleep(1)
        finally:
            gw.release()
            gw.stop_holding_reads()  # the freeze comes next

    gw = Gateway(os.path.join(STATE_DIR, "gateway"))
    serve_gateway(gw, "0.0.0.0", APP_PORT, FEED_PORT, lambda: status, savepoint)
    jm = subprocess.Popen(dies_with_us([os.path.join(home, "bin", "jobmanager.sh"),
                                        "start-foreground"]),
                          env=env, start_new_session=True)
    CHILDREN.append(jm)
    env = dict(env, MEC_FLINK_FEED="%s:%d" % (my_ip, FEED_PORT),
               MEC_FLINK_SINK="http://%s:%d/results" % (my_ip, APP_PORT))
    while jm.poll() is None:
        time.sleep(1)
        try:
            overview = rest("127.0.0.1", "/overview")
            jobs = rest("127.0.0.1", "/jobs/overview")["jobs"]
        except (OSError, ValueError, KeyError):
            continue
        live = [j for j in jobs if j["state"] not in (
            "FAILED", "CANCELED", "FINISHED")]
        status.update(taskmanagers=overview.get("taskmanagers"),
                      jobs=[{"id": j["jid"], "state": j["state"]} for j in live])
        if consumed["path"] and any(j["state"] == "RUNNING" for j in live):
            shutil.rmtree(consumed.pop("path"), ignore_errors=True)  # never again
            consumed["path"] = None
        if live or not overview.get("taskmanagers") or \
                time.monotonic() < paused["until"]:
            continue
        restore = latest_savepoint(savepoints)
        log("submitting the job (%d TaskManager(s))%s" % (
            overview["taskmanagers"], " from savepoint " + restore if restore else ""))
        res = subprocess.run([os.path.join(home, "bin", "flink"), "run", "-d",
                              "-m", "127.0.0.1:%d" % REST_PORT]
                             + (["-s", restore, "--allowNonRestoredState"] if restore else [])
                             + job_file(), env=env,
                             stdout=sys.stdout, stderr=sys.stdout, timeout=300)
        if res.returncode == 0 and restore:
            consumed["path"] = restore  # removed once the job runs from it
            status["restored_from"] = restore
        if res.returncode:
            log("job submission failed (exit %d); trying again" % res.returncode)
            time.sleep(5)
    return jm.returncode


def latest_savepoint(directory):
    """The newest complete savepoint (a directory with a regular
    ``_metadata``) or None; links are skipped, never followed (a savepoint
    path goes to ``flink run -s`` and is removed once the job runs)."""
    def regular(path, kind):
        try:
            return kind(os.lstat(path).st_mode)
        except OSError:
            return False
    if not regular(directory, stat.S_ISDIR):
        return None
    found = [os.path.join(directory, d) for d in os.listdir(directory)]
    found = [d for d in found if regular(d, stat.S_ISDIR)
             and regular(os.path.join(d, "_metadata"), stat.S_ISREG)]
    return max(found, key=lambda d: os.lstat(d).st_mtime) if found else None


def running_job():
    """(id of the job whose every task runs, None) or (None, why not)."""
    try:
        listed = rest("127.0.0.1", "/jobs/overview")["jobs"]
        jobs = [j for j in listed if j["state"] == "RUNNING"]
        if not jobs:
            return None, "no running job (%s)" % (
                ", ".join(j["state"] for j in listed) or "none submitted")
        vertices = rest("127.0.0.1", "/jobs/%s" % jobs[0]["jid"])["vertices"]
    except (OSError, ValueError, KeyError) as e:
        return None, "JobManager not answering: %s" % e
    waiting = sorted({v["status"] for v in vertices} - {"RUNNING"})
    if waiting:
        return None, "job %s has tasks %s" % (jobs[0]["jid"], "/".join(waiting))
    return jobs[0]["jid"], None


def take_savepoint(jid, deadline):
    """A savepoint, then cancel, through the REST API (no JVM to start):
    ``flink stop`` fails on a socket source (its cancel closes the socket,
    which fails the savepoint).  (path, None) or (None, why)."""
    try:
        target = own_dir(os.path.join(STATE_DIR, "savepoints"))
    except (PlantedLink, OSError) as e:
        return None, str(e)
    try:
        trigger = rest_post("/jobs/%s/savepoints" % jid, {
            "target-directory": "file://" + target, "cancel-job": True})
        while True:
            st = rest("127.0.0.1", "/jobs/%s/savepoints/%s" % (jid, trigger["request-id"]))
            if st["status"]["id"] == "COMPLETED":
                break
            if time.monotonic() > deadline:
                return None, "savepoint still in progress at the deadline"
            time.sleep(0.2)
    except (OSError, ValueError, KeyError) as e:
        return None, "savepoint failed: %s" % e
    op = st.get("operation") or {}
    failure = op.get("failure-cause")
    if failure:
        cause = failure.get("stack-trace", "") if isinstance(failure, dict) else str(failure)
        return None, "; ".join(line.strip() for line in cause.splitlines()
                               if "Exception" in line)[:600] or str(failure)[:600]
    return op.get("location"), None


def master_address(my_ip):
    try:
        with open(PEERS_FILE) as f:
            first = (f.read().split() or [None])[0]
    except OSError:
        return None
    return first if first and first != my_ip else None


def run_taskmanager(home, env, my_ip):
    conf_dir = os.path.join(RUN_DIR, "flink-conf")
    while True:
        master = master_address(my_ip)
        if not master:
            time.sleep(0.5)
            continue
        write_conf(home, conf_dir, {"jobmanager.rpc.address": master,
                                    "taskmanager.host": my_ip,
                                    "taskmanager.resource-id": my_ip,
                                    "taskmanager.bind-host": "0.0.0.0"})
        log("TaskManager for the JobManager at %s" % master)
        tm = subprocess.Popen(dies_with_us([os.path.join(home, "bin", "taskmanager.sh"),
                                            "start-foreground"]),
                              env=dict(env, FLINK_CONF_DIR=conf_dir),
                              start_new_session=True)
        CHILDREN[:] = [tm]
        while tm.poll() is None and master_address(my_ip) == master:
            time.sleep(0.5)
        if tm.poll() is None:
            log("the JobManager moved: restarting the TaskManager")
            os.killpg(tm.pid, signal.SIGTERM)
            try:
                tm.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(tm.pid, signal.SIGKILL)
                tm.wait()
        else:
            time.sleep(1)


CHILDREN = []


def _terminate(*_):
    for child in CHILDREN:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except OSError:
            pass
    os.killpg(0, signal.SIGKILL)  # and a job submission under way


def resolvable_hostname(my_ip, hosts="/etc/hosts"):
    """The JVM asks for this host's name and address (a TaskManager's
    resource id): the container's name resolves nowhere else."""
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, None)
        return
    except OSError:
        pass
    try:
        if os.path.exists(hosts):
            with open(hosts) as f:
                if any(name in line.split()[1:] for line in f
                       if not line.startswith("#")):
                    return
        with open(hosts, "a") as f:
            f.write("%s %s\n" % (my_ip, name))
    except OSError as e:
        log("cannot add %s to %s: %s" % (name, hosts, e))


def main():
    home = flink_home()
    my_ip = os.environ.get("MY_IP") or "127.0.0.1"
    resolvable_hostname(my_ip)
    env = dict(os.environ, PATH=os.path.join(VENV, "bin") + ":" + os.environ.get(
        "PATH", "/usr/bin:/bin"), FLINK_HOME=home)
    java = glob.glob("/usr/lib/jvm/java-17-openjdk-*")
    if java:
        env["JAVA_HOME"] = java[0]
    signal.signal(signal.SIGTERM, _terminate)
    if os.environ.get("MY_ROLE") == "master":
        sys.exit(run_jobmanager(home, env, my_ip))
    run_taskmanager(home, env, my_ip)


if __name__ == "__main__":
    main()
