#!/usr/bin/python3
"""MEC-ConPaaS service agent: PID 1 of every service container.

It implements ConPaaS's generic-service contract (``init.sh`` once, then
``run.sh``; ``notify.sh`` when peers change; ``interrupt.sh``;
``cleanup.sh`` on stop) and answers the manager's and HAProxy's health
checks.  An instance created to receive state (migration, ``service
start``) boots *held* (``MEC_HOLD=1``): the agent answers but runs nothing
until ``POST /start``, so the app's first read of its state directory sees
the copied state; ``POST /restore`` applies a later delta (``restore.sh``,
or a restart of the app).  It runs inside minimal images on Pis, so it uses only the Python
standard library, and it is the only program the manager talks to inside a
container.

Its API wants ``Authorization: Bearer <secret>``, the per-instance secret
the node agent leaves in ``SECRET_FILE`` (read and removed here before the
app starts).  Only ``GET /health`` answers without it, and then says no
more than healthy or not (200/503): that is what the access point's
HAProxy checks, whose server slots move between instances at run time
and so cannot carry a per-instance header.
"""
import hmac
import http.server
import importlib.util
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
import wsgiref.simple_server

APP_DIR = os.environ.get("MEC_APP_DIR", "/srv/app")
STATE_DIR = os.environ.get("MEC_STATE_DIR", "/var/lib/service")
LOG_FILE = os.environ.get("MEC_LOG_FILE", "/var/log/mec-app.log")
SERVICE_TYPE = os.environ.get("MEC_SERVICE_TYPE", "generic")
APP_PORT = int(os.environ.get("MEC_APP_PORT", "8080"))
AGENT_PORT = int(os.environ.get("MEC_AGENT_PORT", "8999"))
PEERS_FILE = os.path.join(os.environ.get("MEC_RUN_DIR", "/run/mec"), "peers")
HOLD = os.environ.get("MEC_HOLD") == "1"
# A flink service's endpoint is its JobManager's gateway (flink.py): the
# access points' HAProxy sends nothing to its TaskManagers.
FLINK_JOBMANAGER = SERVICE_TYPE == "flink" and os.environ.get("MY_ROLE") == "master"
SERVES_ENDPOINT = SERVICE_TYPE != "flink" or FLINK_JOBMANAGER
# containers.AGENT_SECRET_FILE
SECRET_FILE = os.environ.get("MEC_SECRET_FILE", "/etc/mec-conpaas/agent-secret")
MAX_BODY = 1024 * 1024
# restore.sh's limit while the app is held for a switch-first migration.
HELD_RESTORE_TIMEOUT = 20
SECRET = None


def load_secret():
    """Read the secret and remove its file, so the app never finds it."""
    global SECRET
    try:
        with open(SECRET_FILE) as f:
            SECRET = f.read().strip() or None
    except OSError:
        SECRET = None
    try:
        os.unlink(SECRET_FILE)
    except OSError:
        pass


class App:
    """Supervises the user's application process."""

    def __init__(self):
        self.proc = None
        self.state = "INIT"
        self.restarts = 0
        self.stopping = False
        self.lock = threading.Lock()
        self.log = open(LOG_FILE, "ab", buffering=0)
        # Migration's hold (restore phase ``hold``): the process group of
        # the app paused with SIGSTOP, and whether a final delta was taken
        # up (``finish``), which a manager that lost the answer asks.
        self.held_pgid = None
        self.restored = False
        self.aborted = False  # the manager gave up on this delta (``abort``)

    def env(self):
        env = dict(os.environ)
        env.setdefault("MY_IP", "")
        env.setdefault("MY_ROLE", "worker")
        env.setdefault("MASTER_IP", "")
        env["PEERS_FILE"] = PEERS_FILE
        try:
            with open(PEERS_FILE) as f:
                env["PEERS"] = " ".join(f.read().split())
        except OSError:
            env["PEERS"] = ""
        return env

    def script(self, name):
        path = os.path.join(APP_DIR, name)
        return path if os.path.isfile(path) else None

    def run_hook(self, name, timeout=60):
        path = self.script(name)
        if not path:
            return None
        self._logline("running %s" % name)
        try:
            res = subprocess.run(["/bin/sh", path], cwd=APP_DIR, env=self.env(),
                                 stdout=self.log, stderr=self.log,
                                 timeout=timeout)
            return res.returncode
        except subprocess.TimeoutExpired:
            self._logline("%s timed out after %ss" % (name, timeout))
            return -1

    def _logline(self, text):
        self.log.write(("[mec-service-agent] %s\n" % text).encode())

    def command(self):
        if self.script("run.sh"):
            return ["/bin/sh", self.script("run.sh")]
        if SERVICE_TYPE == "flink":  # JobManager or TaskManager: flink.py
            return [sys.executable, os.path.join(os.path.dirname(
                os.path.abspath(__file__)), "flink.py")]
        if SERVICE_TYPE == "web" and os.path.isfile(
                os.path.join(APP_DIR, "wsgi.py")):
            return [sys.executable, os.path.abspath(__file__), "--serve-wsgi",
                    os.path.join(APP_DIR, "wsgi.py")]
        if SERVICE_TYPE == "web" and os.path.isdir(
                os.path.join(APP_DIR, "static")):
            return [sys.executable, os.path.abspath(__file__), "--serve-static",
                    os.path.join(APP_DIR, "static")]
        return None

    def start(self):
        """init.sh once, then supervise run.sh; a held agent waits for
        ``POST /start`` (its state is being copied in from the host), a
        stopped one starts run.sh again."""
        with self.lock:
            if self.state not in ("INIT", "HELD", "STOPPED"):
                return False
            again, self.state = self.state == "STOPPED", "PROLOGUE"
        if again:  # a stop undone: init.sh ran already
            self._start_process()
            return True
        os.makedirs(STATE_DIR, exist_ok=True)
        rc = self.run_hook("init.sh", timeout=300)
        if rc not in (None, 0):
            self.state = "ERROR"
            self._logline("init.sh failed with exit code %s" % rc)
            return True
        self._start_process()
        return True

    def _start_process(self):
        self.stopping = False
        self.supervisor = threading.Thread(target=self._supervise, daemon=True)
        self.supervisor.start()

    def _supervise(self):
        cmd = self.command()
        if not cmd:
            self.state = "ERROR"
            self._logline("nothing to run: no run.sh")
            return
        while True:
            with self.lock:
                if self.stopping:
                    break
                self.proc = subprocess.Popen(cmd, cwd=APP_DIR, env=self.env(),
                                             stdout=self.log, stderr=self.log,
                                             start_new_session=True)
                self.state = "RUNNING"
            rc = self.proc.wait()
            if self.stopping:
                break
            if self.held_pgid is not None:
                # Restarted now, it would serve the state from before the
                # delta: the migration's finish finds it gone and fails.
                self.state = "ERROR"
                self._logline("application exited with %s while held for a "
                              "migration; not restarted" % rc)
                break
            self.restarts += 1
            self.state = "RESTARTING"
            self._logline("application exited with %s; restarting" % rc)
            time.sleep(min(5, 0.2 * self.restarts))

    def _stop_process(self, sig=signal.SIGTERM, grace=10):
        """End the app and its supervisor (no automatic restart)."""
        with self.lock:
            self.stopping = True
            proc = self.proc
        if proc and proc.poll() is None:
            os.killpg(proc.pid, sig)
            self._resume()  # a paused app takes its signal now
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if getattr(self, "supervisor", None) is not None:
            self.supervisor.join(grace)

    def restore(self, phase, timeout=60):
        """Make the running app take up state that changed under it.

        ``prepare`` (before the source is frozen): without ``restore.sh``
        the app is killed with SIGKILL, so that it cannot write its stale
        in-memory view over the state about to arrive.  ``finish`` (the
        final delta is in): run ``restore.sh``, or start ``run.sh`` again;
        then wait until the app is healthy.
        """
        hook = self.script("restore.sh")
        mode = "restore.sh" if hook else "restart"
        if phase == "prepare":
            self.restored = self.aborted = False
            if not hook:
                self._stop_process(signal.SIGKILL)
                self.state = "RESTORING"
            return {"mode": mode}
        if phase == "hold":
            return dict(self._hold(), mode=mode)
        if phase == "abort":
            # The manager lost finish's answer: either the delta was taken
            # up (the app serves with it: the migration goes on) or it
            # never will be (a late finish refuses): never both.
            with self.lock:
                self.aborted = not self.restored
                return {"mode": mode, "held": self.held_pgid is not None,
                        "restored": self.restored}
        t0 = time.monotonic()
        if hook:
            if self.held_pgid is not None:
                # Requests wait at the paused app meanwhile: well inside
                # the proxies' ``timeout server``, which would retry them.
                timeout = min(timeout, HELD_RESTORE_TIMEOUT)
            rc = self.run_hook("restore.sh", timeout=timeout)
            if rc != 0:
                return {"mode": mode, "healthy": False,
                        "detail": "restore.sh exited %s" % rc}
        else:
            self._stop_process(signal.SIGKILL)  # no-op after prepare
            self._start_process()
        if self.held_pgid is not None:
            # Held: the app is the process that was healthy before the
            # pause, and the requests queued in its listen backlog are
            # waiting for it: no health probe ahead of them.
            with self.lock:
                if self.aborted:
                    return {"mode": mode, "held": True, "healthy": False,
                            "detail": "the migration was abandoned (abort)"}
                self.restored = True
            self._resume()
            alive = self.proc is not None and self.proc.poll() is None
            return {"mode": mode, "held": True, "healthy": alive,
                    "detail": "resumed" if alive else "application exited",
                    "ms": round((time.monotonic() - t0) * 1000, 1)}
        self.restored = True
        deadline = t0 + timeout
        ok, detail = self.healthy()
        while not ok and time.monotonic() < deadline:
            time.sleep(0.005)
            ok, detail = self.healthy()
        return {"mode": mode, "healthy": ok, "detail": detail,
                "ms": round((time.monotonic() - t0) * 1000, 1)}

    def _hold(self):
        """Pause the app (SIGSTOP to its process group) for migration's
        switch-first order: the proxies send requests here while the source
        still answers the ones it has, the kernel completes their
        handshakes and queues them in the listen backlog, and the app reads
        them only once the final delta is in (``finish``), so none sees the
        state from before it.  Only an app with ``restore.sh`` (one that
        takes up a delta while running) can be held: the others are
        restarted around the delta instead."""
        if not self.script("restore.sh"):
            return {"held": False, "detail": "no restore.sh: restarted instead"}
        with self.lock:
            proc = self.proc
            if self.state != "RUNNING" or proc is None or proc.poll() is not None:
                return {"held": False, "detail": "application is %s" % self.state.lower()}
            os.killpg(proc.pid, signal.SIGSTOP)
            self.held_pgid = proc.pid
        # kill() only queues the signal: answer once every task of the
        # group is stopped, as the switch may follow at once.
        deadline = time.monotonic() + 2
        while not _group_stopped(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.001)
        return {"held": True}

    def _resume(self):
        pgid, self.held_pgid = self.held_pgid, None
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def healthy(self):
        if self.state == "HELD":
            return False, "held until its state is in (POST /start)"
        if self.held_pgid is not None:  # a probe would wait for the resume
            alive = self.proc is not None and self.proc.poll() is None
            return alive, ("paused for a migration's final delta" if alive
                           else "application exited while paused")
        if self.state != "RUNNING" or self.proc is None or \
                self.proc.poll() is not None:
            return False, "application is %s" % self.state.lower()
        if SERVICE_TYPE == "web" or FLINK_JOBMANAGER:  # its gateway answers
            try:
                req = urllib.request.Request(
                    "http://127.0.0.1:%d/" % APP_PORT, method="HEAD",
                    headers={"X-Mec-Health": "1"})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    return resp.status < 500, "HTTP %d" % resp.status
            except urllib.error.HTTPError as e:
                return e.code < 500, "HTTP %d" % e.code
            except OSError as e:
                return False, "no HTTP answer on port %d: %s" % (APP_PORT, e)
        hook = self.script("health.sh")
        if hook:
            rc = self.run_hook("health.sh", timeout=5)
            return rc == 0, "health.sh exited %s" % rc
        return True, "running"

    def notify(self, peers):
        os.makedirs(os.path.dirname(PEERS_FILE), exist_ok=True)
        tmp = PEERS_FILE + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(peers) + "\n")
        os.replace(tmp, PEERS_FILE)
        return self.run_hook("notify.sh")

    def stop(self):
        """ConPaaS's stop: cleanup.sh, then the app gets SIGTERM (10 s to
        write its state back before SIGKILL)."""
        if self.state == "STOPPED":
            return None
        rc = self.run_hook("cleanup.sh", timeout=30)
        self._stop_process(signal.SIGTERM)
        self.state = "STOPPED"
        return rc


APP = App()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall per answer

    def log_message(self, *args):
        pass

    def _authorized(self):
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        return SECRET is not None and scheme.lower() == "bearer" and \
            hmac.compare_digest(value.strip().encode(), SECRET.encode())

    def _refuse(self):
        self._send(401, {"error": "missing or wrong service agent secret: only "
                         "the manager and this node may call this API"})

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        if code == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        if self.path == "/health":
            ok, detail = APP.healthy()
            if not self._authorized():  # the access point's HAProxy
                ok = ok and SERVES_ENDPOINT
                return self._send(200 if ok else 503, {"healthy": ok})
            self._send(200 if ok else 503, {
                "healthy": ok, "detail": detail, "state": APP.state,
                "restarts": APP.restarts})
        elif not self._authorized():
            self._refuse()
        elif self.path.startswith("/logs"):
            try:
                with open(LOG_FILE, "rb") as f:
                    f.seek(0, 2)
                    f.seek(max(0, f.tell() - 65536))
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                text = ""
            self._send(200, {"log": text})
        else:
            self._send(404, {"error": "no such path"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return self._send(413, {"error": "body larger than %d bytes" % MAX_BODY})
        data = self.rfile.read(length)
        if not self._authorized():
            return self._refuse()
        try:
            body = json.loads(data or b"{}")
        except ValueError:
            return self._send(400, {"error": "body is not JSON"})
        if self.path == "/notify":
            rc = APP.notify([str(p) for p in body.get("peers", [])])
            self._send(200, {"notify_exit_code": rc})
        elif self.path == "/interrupt" and FLINK_JOBMANAGER and \
                not APP.script("interrupt.sh"):
            # before a migration's freeze: stop the job with a savepoint
            try:
                req = urllib.request.Request("http://127.0.0.1:%d/savepoint" % APP_PORT,
                                             data=b"", method="POST")
                with urllib.request.urlopen(req, timeout=80) as resp:
                    self._send(200, json.loads(resp.read()))
            except (OSError, ValueError) as e:
                self._send(503, {"error": "no savepoint: %s" % e})
        elif self.path == "/interrupt":
            self._send(200, {"exit_code": APP.run_hook("interrupt.sh")})
        elif self.path == "/start":
            # init.sh may take minutes: the caller polls /health.
            threading.Thread(target=APP.start, daemon=True).start()
            self._send(202, {"state": APP.state})
        elif self.path == "/restore":
            phase = body.get("phase")
            if phase not in ("prepare", "hold", "finish", "abort"):
                return self._send(400, {"error": "phase must be prepare, hold, "
                                                 "finish or abort"})
            res = APP.restore(phase, float(body.get("timeout", 60)))
            self._send(200 if res.get("healthy", True) else 503, res)
        elif self.path == "/stop":
            self._send(200, {"cleanup_exit_code": APP.stop(), "state": APP.state})
        else:
            self._send(404, {"error": "no such path"})


def _bind_without_dns(server):
    # HTTPServer.server_bind resolves its own name with getfqdn(): a
    # reverse DNS lookup that takes 5 s to time out in a container without
    # a reachable resolver, delaying every instance's start.
    socketserver.TCPServer.server_bind(server)
    server.server_name = "localhost"
    server.server_port = server.server_address[1]


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # see serve_wsgi: static apps migrate too
    server_bind = _bind_without_dns


def _group_stopped(pgid):
    """Whether every thread of every process in group ``pgid`` is stopped
    (``T``) or gone."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            for task in os.listdir("/proc/%s/task" % entry):
                with open("/proc/%s/task/%s/stat" % (entry, task)) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t", "Z", "X"):
                        return False
        except (OSError, IndexError, ValueError):
            continue
    return True


def reap_children(*_):
    # As PID 1 we inherit orphans; reap them without touching the
    # supervised application (Popen.wait owns that pid).
    own = APP.proc.pid if APP.proc else None
    try:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == own:
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] == "Z" and int(fields[1]) == os.getpid():
                    os.waitpid(int(entry), os.WNOHANG)
            except (OSError, IndexError, ChildProcessError):
                pass
    except OSError:
        pass


def serve_wsgi(path):
    """Threaded stdlib WSGI server for ``wsgi.py:application``."""
    spec = importlib.util.spec_from_file_location("mec_user_wsgi", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(path))
    spec.loader.exec_module(module)

    class WSGIServer(socketserver.ThreadingMixIn,
                     wsgiref.simple_server.WSGIServer):
        daemon_threads = True
        allow_reuse_address = True
        # socketserver's default backlog is 5: while a migration holds the
        # app frozen, the 6th connection's SYN was dropped and HAProxy
        # waited its whole 1 s connect timeout before retrying on the new
        # instance (a 1.1 s hole for a 10 ms open-loop client).  Queued
        # connections get a reset when the frozen app is killed instead,
        # and are retried at once.
        request_queue_size = 128

        def server_bind(self):
            _bind_without_dns(self)
            self.setup_environ()

    class QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, *args):
            pass

    httpd = wsgiref.simple_server.make_server(
        "0.0.0.0", APP_PORT, module.application, server_class=WSGIServer,
        handler_class=QuietHandler)
    httpd.serve_forever()


def serve_static(directory):
    """Threaded static file server for ``static/`` web bundles."""
    import functools

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=directory)
    Server(("0.0.0.0", APP_PORT), handler).serve_forever()


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-wsgi":
        return serve_wsgi(sys.argv[2])
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-static":
        return serve_static(sys.argv[2])
    load_secret()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = Server(("0.0.0.0", AGENT_PORT), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if HOLD:
        APP.state = "HELD"
    else:
        APP.start()
    while not stop.wait(1.0):
        if os.getpid() == 1:
            reap_children()
    APP.stop()
    server.shutdown()


if __name__ == "__main__":
    main()
