"""A migration's switch through a real HAProxy: requests sent to a frozen
source are answered by the new instance once the source is killed
(freeze-first), and requests sent to a paused target after the switch wait
there and are answered by it once it resumes, none by the source
(switch-first).

The agent's own config and runtime calls (``haproxy.HAProxy``), two app
processes (the source stopped with SIGSTOP, which, like the cgroup freezer,
leaves the kernel accepting connections and queueing requests nobody
reads), GET and POST, a connection per request and kept-alive ones, all in
a private network namespace (``unshare -n``): nothing binds on the host.
"""
import http.client
import http.server
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time

SID = "0b7e3a9c-1111-2222-3333-444455556666"
OLD, NEW = "127.0.0.2", "127.0.0.3"
PORT = 20001


class App(http.server.BaseHTTPRequestHandler):
    """Answers every request with its server's address and method."""
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = ("%s %s" % (self.server.server_address[0], self.command)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def serve_app(addr):
    """The app on 8080 and its health on 8999 (the slots' check port)."""
    for port in (8999, 8080):
        server = socketserver.ThreadingTCPServer((addr, port), App)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Event().wait()


def request(method, conn, keepalive, out):
    """One request; ``out`` gets (method, keep-alive, status or error,
    body, monotonic time of the answer)."""
    try:
        conn.request(method, "/", body=b"0123456789" if method == "POST" else None,
                     headers={} if keepalive else {"Connection": "close"})
        resp = conn.getresponse()
        out.append((method, keepalive, resp.status, resp.read().decode(),
                    time.monotonic()))
    except (OSError, http.client.HTTPException) as e:
        out.append((method, keepalive, None, repr(e), time.monotonic()))


def scenario(state_dir, order="freeze-first"):
    """Runs inside the namespace: the switch, as a migration makes it."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    from mec_conpaas import conf as conf_mod
    from mec_conpaas.agents.node import haproxy
    conf = conf_mod.parse_args([])
    conf.set_override("state_path", state_dir)
    conf.set_override("run_path", os.path.join(state_dir, "run"))
    apps = {a: subprocess.Popen([sys.executable, __file__, "app", a]) for a in (OLD, NEW)}
    proxy = haproxy.HAProxy(conf)
    svc = {"name": "shop", "port": PORT, "mode": "http", "far": [], "maxconn": 4,
           "far_tier": "spill"}
    proxy.write_config({SID: dict(svc, near=[{"addr": OLD}])})
    hap = subprocess.Popen(["haproxy", "-W", "-f", proxy.config_path,
                            "-S", proxy.master_socket],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not proxy.alive():
            assert time.monotonic() < deadline, "HAProxy did not start"
            time.sleep(0.05)
        proxy.apply({SID: dict(svc, near=[{"addr": OLD}])}, report=False)
        kept = {m: http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
                for m in ("GET", "POST")}
        out = []
        deadline = time.monotonic() + 10
        while True:  # the old instance serves (and the kept connections open)
            out.clear()
            for m, conn in kept.items():
                request(m, conn, True, out)
            if all(r[2] == 200 for r in out):
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.1)
        if order == "switch-first":
            return switch_first(proxy, svc, apps, kept)
        if order == "routed-back":
            return routed_back(proxy, svc, apps)
        os.kill(apps[OLD].pid, signal.SIGSTOP)  # frozen
        sent = send_and_wait(kept)  # they reach the frozen instance and wait there
        proxy.apply({SID: dict(svc, near=[{"addr": NEW}], draining=[{"addr": OLD}])},
                    report=False)
        return released(sent, lambda: os.kill(apps[OLD].pid, signal.SIGKILL))
    finally:
        hap.terminate()
        hap.wait(10)
        for p in apps.values():
            p.kill()
            p.wait(10)


def send_and_wait(kept=None, count=1):
    """``count`` times GET and POST, each on a new connection and (with
    ``kept``) on a kept-alive one, all at once, then 0.5 s for them to
    reach a stopped app: (threads, their answers, how many came)."""
    out = []
    threads = [threading.Thread(target=request, args=(
        m, kept[m] if ka else http.client.HTTPConnection("127.0.0.1", PORT,
                                                         timeout=15), ka, out))
        for _ in range(count) for m in ("GET", "POST")
        for ka in ((False, True) if kept else (False,))]
    for t in threads:
        t.start()
    time.sleep(0.5)
    return threads, out, len(out)


def released(sent, release):
    """``release()`` them; each answer with its ms after it."""
    threads, out, waiting = sent
    t0 = time.monotonic()
    release()
    for t in threads:
        t.join(20)
    return {"answered_before_kill": waiting,
            "results": [[m, ka, st, body, round(1000 * (t - t0), 1)]
                        for m, ka, st, body, t in out]}


def switch_first(proxy, svc, apps, kept):
    """The target paused (as its service agent's ``hold`` does), the
    proxy switched to it with the source draining; requests then, on new
    and on kept-alive connections (which had gone to the source), wait at
    the target until it resumes."""
    os.kill(apps[NEW].pid, signal.SIGSTOP)
    proxy.apply({SID: dict(svc, near=[{"addr": NEW}], draining=[{"addr": OLD}])},
                report=False)
    return released(send_and_wait(kept), lambda: os.kill(apps[NEW].pid, signal.SIGCONT))


def routed_back(proxy, svc, apps):
    """Switch-first, then back: more requests than the paused target's
    ``maxconn`` (4) came, so some wait in the backend's queue, when the
    migration fails and the proxy goes back to the source (out of drain)
    and the target is killed."""
    os.kill(apps[NEW].pid, signal.SIGSTOP)
    proxy.apply({SID: dict(svc, near=[{"addr": NEW}], draining=[{"addr": OLD}])},
                report=False)
    sent = send_and_wait(count=4)
    proxy.apply({SID: dict(svc, near=[{"addr": OLD}])}, report=False)
    return released(sent, apps[NEW].kill)


def test_requests_queued_for_a_paused_target_go_back_to_the_source(tmp_path):
    got = run_scenario(tmp_path, "routed-back")
    assert got["answered_before_kill"] == 0
    results = got["results"]
    assert len(results) == 8, results
    for method, _keepalive, status, body, ms in results:
        # HAProxy's queue handed to the source, not 503 after ``timeout
        # queue`` (10 s).  Those the killed target reset are retried, some
        # after HAProxy's turn-around of min(timeout connect, 1 s).
        assert status == 200 and body == "%s %s" % (OLD, method), results
        assert ms < 3000, results


def run_scenario(tmp_path, order):
    res = subprocess.run(["unshare", "-n", sys.executable, __file__, "scenario",
                          str(tmp_path), order], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-1])


def test_requests_sent_to_a_paused_target_wait_for_it_and_skip_the_source(tmp_path):
    got = run_scenario(tmp_path, "switch-first")
    assert got["answered_before_kill"] == 0  # they really waited at the target
    results = got["results"]
    assert sorted((m, ka) for m, ka, *_ in results) == [
        ("GET", False), ("GET", True), ("POST", False), ("POST", True)]
    for method, _keepalive, status, body, ms in results:
        # The kept-alive ones too: HAProxy chose the target for them, not
        # the draining source their connection had last used.
        assert status == 200 and body == "%s %s" % (NEW, method), results
        assert ms < 1000, results  # at the resume, not after a retry


def test_requests_held_by_a_frozen_source_move_to_the_new_instance(tmp_path):
    got = run_scenario(tmp_path, "freeze-first")
    assert got["answered_before_kill"] == 0  # they really waited on the frozen one
    results = got["results"]
    assert len(results) == 4
    # Each answered once, by the new instance, in both connection models:
    # the POSTs too (they never ran on the old one: it read nothing).
    assert sorted((m, ka) for m, ka, *_ in results) == [
        ("GET", False), ("GET", True), ("POST", False), ("POST", True)]
    for method, _keepalive, status, body, ms in results:
        assert status == 200 and body == "%s %s" % (NEW, method), results
        # At once after the kill, not after a timeout or a turn-around.
        assert ms < 1000, results


if __name__ == "__main__":
    if sys.argv[1] == "app":
        serve_app(sys.argv[2])
    else:
        print(json.dumps(scenario(*sys.argv[2:4])))
