"""Chaos on the embedded edge: random operations, SIGKILLed daemons, probes.

Shared by ``tests/functional/test_chaos.py`` (which judges the outcome) and
``bench/chaos.py`` (which times convergence).  Only the public REST API and
the edge's process control are used, so the harness keeps working whatever
the manager does inside.

Three things run at once:

* the driver (``Chaos.run``) sends random create, scale, migrate, node drain
  (+ enable) and delete calls from a seeded RNG, without waiting for them;
* a killer thread SIGKILLs the manager (restarting it at once) and node
  agents (restarting them after a random outage) at random moments;
* one prober per access point, inside that access point's Wi-Fi client
  namespace, sends a request to every probed service's endpoint in turn and
  logs each outcome with wall-clock times (``time.time()``: the manager's
  timestamps are wall-clock too, so the two timelines compare).

Run as ``python -m mec_conpaas.edge.chaos probe ...`` it is the prober.
"""
import argparse
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

from mec_conpaas.agents.node import haproxy as haproxy_mod
from mec_conpaas.agents.node import httpserver
from mec_conpaas.cli import client as client_mod
from mec_conpaas.edge import loadgen

TERMINAL = ("SUCCEEDED", "FAILED")


def wall(iso):
    """Seconds since the epoch of one of the API's ISO timestamps."""
    return datetime.datetime.fromisoformat(iso).timestamp() if iso else None


# -- the prober (inside a client namespace) ----------------------------------
def probe_main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--ap", required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--targets", required=True, help="JSON file {name: port}")
    p.add_argument("--out", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    targets, stamp = {}, None
    with open(args.out, "a", buffering=1) as out:
        while not os.path.exists(args.stop_file):
            try:
                st = os.stat(args.targets).st_mtime_ns
                if st != stamp:
                    with open(args.targets) as f:
                        targets, stamp = json.load(f), st
            except (OSError, ValueError):
                pass  # being replaced: keep the last set
            for name, port in sorted(targets.items()):
                rec = {"ap": args.ap, "svc": name, "t0": time.time()}
                try:
                    status, body = loadgen.one("http://%s:%d/" % (args.address, port),
                                               args.timeout)
                    rec.update(ok=status == 200, status=status)
                    if status != 200:
                        rec["error"] = body[:200]
                except Exception as e:  # every failure counts
                    rec.update(ok=False, error="%s: %s" % (type(e).__name__, e))
                rec["t1"] = time.time()
                out.write(json.dumps(rec) + "\n")
            time.sleep(args.interval)


class Probes:
    """One prober per access point; ``set`` changes what they probe."""

    def __init__(self, edge, interval=0.1):
        self.dir = tempfile.mkdtemp(prefix="mec-chaos-")
        self.targets_file = os.path.join(self.dir, "targets.json")
        self.stop_file = os.path.join(self.dir, "stop")
        self.targets = {}
        self.lock = threading.Lock()
        self._write()
        self.procs = {}
        for ap in edge.net.aps:
            address, _ = edge.net.client_addresses(ap)
            if not edge.net.routed_locally(address):
                raise RuntimeError("%s is not on the edge's own link: refusing to "
                                   "send traffic off this machine" % address)
            self.procs[ap] = subprocess.Popen(
                ["ip", "netns", "exec", edge.net.client_netns(ap), sys.executable,
                 "-m", "mec_conpaas.edge.chaos", "probe", "--ap", ap,
                 "--address", address, "--targets", self.targets_file,
                 "--out", os.path.join(self.dir, ap + ".jsonl"),
                 "--stop-file", self.stop_file, "--interval", str(interval)])

    def _write(self):
        tmp = self.targets_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.targets, f)
        os.replace(tmp, self.targets_file)

    def set(self, name, port):
        with self.lock:
            if port is None:
                self.targets.pop(name, None)
            else:
                self.targets[name] = port
            self._write()

    def stop(self):
        """Stop the probers; every probe's outcome, in time order."""
        open(self.stop_file, "w").close()
        records = []
        for ap, proc in self.procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            try:
                with open(os.path.join(self.dir, ap + ".jsonl")) as f:
                    records += [json.loads(line) for line in f if line.endswith("\n")]
            except OSError:
                pass
        subprocess.run(["rm", "-rf", self.dir])
        return sorted(records, key=lambda r: r["t0"])


# -- the killer ----------------------------------------------------------------
class Killer(threading.Thread):
    """SIGKILLs the manager and node agents at random moments.

    The manager is restarted at once (``start_manager`` returns when its API
    answers); a node agent after a random outage of ``agent_outage`` seconds,
    sometimes longer than the heartbeat timeout so the node is seen down.
    Every kill is logged with its wall-clock times.
    """

    def __init__(self, edge, client, rng, manager_kills, agent_kills, duration,
                 agent_outage=(1.0, 9.0), log=print):
        super().__init__(daemon=True)
        self.edge, self.c, self.log = edge, client, log
        self.rng = random.Random(rng.random())
        self.outage = agent_outage
        plan = [("manager", None)] * manager_kills + [
            ("agent", self.rng.choice(edge.net.aps)) for _ in range(agent_kills)]
        times = sorted(self.rng.uniform(2, duration) for _ in plan)
        self.rng.shuffle(plan)
        self.plan = list(zip(times, plan))
        self.kills = []
        self.error = None
        self.stop_event = threading.Event()

    def run(self):
        t0 = time.monotonic()
        try:
            for at, (kind, ap) in self.plan:
                if self.stop_event.wait(max(0, at - (time.monotonic() - t0))):
                    return
                if kind == "manager":
                    self.kill_manager()
                else:
                    self.kill_agent(ap)
        except Exception as e:
            self.error = e
            raise

    def _sigkill(self, name):
        pid = self.edge.kill(name, signal.SIGKILL)
        while self.edge._pid(name):
            time.sleep(0.02)
        return pid

    def kill_manager(self):
        rec = {"what": "manager", "ap": None, "killed": time.time()}
        self._sigkill("manager")
        self.edge.start_manager()
        # Back when it answers a request (a port accepting connections may
        # still be the dying process's).
        deadline = time.monotonic() + 60
        while True:
            try:
                self.c.nodes()
                break
            except client_mod.ApiError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        rec["back"] = time.time()
        self.kills.append(rec)
        self.log("chaos: manager SIGKILLed, back after %.1f s"
                 % (rec["back"] - rec["killed"]))

    def kill_agent(self, ap):
        outage = self.rng.uniform(*self.outage)
        rec = {"what": "agent", "ap": ap, "killed": time.time()}
        self._sigkill("agent-" + ap)
        self.stop_event.wait(outage)
        self.edge.start_node_agent(ap)
        rec["back"] = time.time()
        self.kills.append(rec)
        self.log("chaos: node agent of %s SIGKILLed, restarted after %.1f s"
                 % (ap, outage))


# -- the driver ----------------------------------------------------------------
class Chaos:
    """Random operations against the manager, with the kills and probes."""

    def __init__(self, edge, client, seed, operations=40, manager_kills=20,
                 agent_kills=5, duration=150, max_services=3, log=print):
        self.edge, self.c, self.log = edge, client, log
        self.seed = seed
        self.rng = random.Random(seed)
        self.operations = operations
        self.duration = duration
        self.max_services = max_services
        self.manager_kills, self.agent_kills = manager_kills, agent_kills
        self.serial = 0
        self.calls = []          # every call sent: what, when, outcome
        self.deleting = {}       # service name -> wall time its delete was sent
        self.probed = set()
        self.drained = None
        self.probes = None
        self.killer = None

    # -- API calls that survive the manager's restarts -------------------
    def get(self, fn, *args, timeout=90):
        """A read, retried while the manager is down or restarting."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fn(*args)
            except client_mod.ApiError as e:
                if e.status not in (0, 502, 503) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def call(self, what, fn, *args, **kwargs):
        """A mutation, sent once: accepted (202), refused (4xx) or unknown
        (the manager died before answering: it may have stored it)."""
        rec = {"what": what, "sent": time.time()}
        try:
            res = fn(*args, **kwargs)
            rec["outcome"] = "accepted"
            ops = res.get("operations") or ([res["operation"]]
                                           if res.get("operation") else [])
            rec["operations"] = [o["id"] for o in ops]
        except client_mod.ApiError as e:
            rec["outcome"] = "unknown" if e.status in (0, 502) else "refused"
            rec["status"], rec["message"] = e.status, e.message[:200]
            res = None
        rec["answered"] = time.time()
        self.calls.append(rec)
        self.log("chaos: %s -> %s%s" % (what, rec["outcome"],
                                        " (%s)" % rec.get("message", "")[:90]
                                        if rec["outcome"] != "accepted" else ""))
        return res, rec

    # -- the random steps --------------------------------------------------
    def nodes_enabled(self):
        return [n["name"] for n in self.get(self.c.nodes) if n["schedulable"]]

    def live(self):
        return [s for s in self.get(self.c.services) if s["name"] not in self.deleting]

    def step(self):
        services = self.live()
        # Start probing services once their create has made them RUNNING.
        for s in services:
            if s["name"] not in self.probed and s["state"] == "RUNNING" \
                    and s["operation"] is None:
                self.probed.add(s["name"])
                self.probes.set(s["name"], s["port"])
        idle = [s for s in services if s["state"] == "RUNNING" and not s["operation"]]
        choices = []
        if len(services) < self.max_services:
            choices += ["create"] * 3
        if idle:
            choices += ["scale"] * 4 + ["migrate"] * 3
        if services and len(services) > 1:
            choices += ["delete"]
        choices += ["enable"] * 3 if self.drained else ["drain"]
        kind = self.rng.choice(choices)
        enabled = self.nodes_enabled()
        if kind == "create":
            self.serial += 1
            self.call("create s%d" % self.serial, self.c.create_service, "web",
                      "s%d" % self.serial, node=self.rng.choice(enabled),
                      count=self.rng.randint(1, 2))
        elif kind == "scale":
            svc = self.rng.choice(idle)
            self.call("scale %s %d" % (svc["name"], n := self.rng.randint(1, 3)),
                      self.c.scale, svc["name"], n)
        elif kind == "migrate":
            svc = self.rng.choice(idle)
            to = self.rng.choice([n for n in enabled if n != svc["home_node"]]
                                 or enabled)
            self.call("migrate %s to %s" % (svc["name"], to), self.c.migrate,
                      svc["name"], to)
        elif kind == "delete":
            svc = self.rng.choice(services)
            self.delete(svc["name"])
        elif kind == "drain":
            node = self.rng.choice(self.edge.net.aps)
            _, rec = self.call("drain %s" % node, self.c.drain_node, node, "chaos")
            if rec["outcome"] != "refused":
                self.drained = node
        else:
            _, rec = self.call("enable %s" % self.drained, self.c.enable_node,
                               self.drained)
            if rec["outcome"] == "accepted":
                self.drained = None

    def delete(self, name):
        """Stop probing first: a deleted service's endpoint goes away."""
        self.probes.set(name, None)
        when = time.time()
        _, rec = self.call("delete %s" % name, self.c.delete_service, name)
        if rec["outcome"] == "refused":
            if name in self.probed:
                self.probes.set(name, self.get(self.c.service, name)["port"])
        else:
            self.deleting[name] = when

    # -- the whole run -----------------------------------------------------
    def run(self):
        self.log("chaos: seed %s (replay with MEC_CHAOS_SEED=%s)" % (self.seed,
                                                                    self.seed))
        self.started = time.time()
        self.probes = Probes(self.edge)
        self.killer = Killer(self.edge, client_mod.Client(self.c.url, self.c.token),
                             self.rng, self.manager_kills,
                             self.agent_kills, self.duration, log=self.log)
        self.killer.start()
        try:
            t0 = time.monotonic()
            pause = self.duration / max(1, self.operations)
            while time.monotonic() - t0 < self.duration and (
                    len(self.calls) < self.operations or self.killer.is_alive()):
                self.step()
                time.sleep(self.rng.uniform(0.3, 1.7) * pause)
            self.killer.join()
        finally:
            self.killer.stop_event.set()
            self.killer.join()
            self.restore()
        self.chaos_ended = time.time()
        if self.killer.error:
            raise self.killer.error

    def restore(self):
        """Every daemon running again and every node enabled."""
        if not self.edge._pid("manager"):
            self.edge.start_manager()
        for ap in self.edge.net.aps:
            if not self.edge._pid("agent-" + ap):
                self.edge.start_node_agent(ap)
        if self.drained:
            self.get(self.c.enable_node, self.drained)
            self.drained = None

    def converge(self, timeout=180):
        """Wait until every operation has ended and no service is held;
        the seconds it took after the chaos ended."""
        deadline = time.monotonic() + timeout
        while True:
            ops = self.get(self.c.operations)
            services = self.get(self.c.services)
            busy = [o for o in ops if o["state"] not in TERMINAL] + \
                [s for s in services if s["operation"]]
            if not busy:
                return time.time() - self.chaos_ended
            if time.monotonic() > deadline:
                raise AssertionError("not converged %d s after the chaos: %s" % (
                    timeout, json.dumps(busy)[:2000]))
            time.sleep(0.5)

    def finish_probes(self):
        return self.probes.stop() if self.probes else []


# -- judging -------------------------------------------------------------------
def expected_count(ops):
    """The count a service should have: its last accepted create/scale's, or
    the previous count if that scale-out failed (a failed scale-out is rolled
    back; a failed scale-in still completes its removals)."""
    count = None
    for op in sorted(ops, key=lambda o: o["created_at"]):
        p = op["params"] or {}
        if op["kind"] == "create" and op["state"] == "SUCCEEDED":
            count = p.get("count", 1)
        elif op["kind"] == "scale":
            if op["state"] == "SUCCEEDED" or p["count"] < p.get("previous", 0):
                count = p["count"]
            else:
                count = p.get("previous", count)
    return count


def agent_call(edge, ap, method, path, body=None):
    token = open(edge.path("nodes", ap, "node-agent.token")).read().strip()
    url = "http://%s:9681%s" % (edge.net.bridge_address(ap), path)
    return httpserver.call(method, url, token, body, timeout=10)


def listening_ports(edge, ap, lo=20000, hi=20999, owners=False):
    """Endpoint ports listened on in the AP's namespace; with ``owners``,
    {port: the process column of ``ss -p``} (who still holds a port a
    deleted service had: test_chaos once found two)."""
    out = subprocess.run(["ip", "netns", "exec", edge.net.netns(ap), "ss", "-Hltnp"],
                         capture_output=True, text=True, check=True).stdout
    ports = {}
    for line in out.splitlines():
        fields = line.split()
        port = int(fields[3].rsplit(":", 1)[1])
        if lo <= port <= hi:
            ports[port] = " ".join(fields[5:])
    return ports if owners else set(ports)


def consistency_problems(edge, admin):
    """What differs between the store and the nodes: containers, each
    access point's HAProxy backends, its listening endpoint ports."""
    services = admin.services()
    by_node = {ap: set() for ap in edge.net.aps}
    for s in services:
        for i in s["instances"]:
            by_node[i["node"]].add(i["id"])
    problems = []
    for ap in edge.net.aps:
        have = {i["id"] for i in agent_call(edge, ap, "GET",
                                                  "/v1/instances")["instances"]}
        if have != by_node[ap]:
            problems.append("%s: containers %s, store %s" % (
                ap, sorted(have), sorted(by_node[ap])))
        proxy = agent_call(edge, ap, "GET", "/v1/proxy")["services"]
        want = {s["id"]: s for s in services if s["instances"]}
        if set(proxy) != set(want):
            problems.append("%s: HAProxy serves %s, services with instances %s"
                            % (ap, sorted(proxy), sorted(want)))
        for sid, p in proxy.items():
            addrs = {srv["addr"].rsplit(":", 1)[0] for srv in p["servers"]}
            # An instance with no address yet (its create not that far) is
            # no backend; the container check above still counts it.
            active = {i["address"] for i in want.get(sid, {}).get("instances", [])
                      if i["address"]}
            if addrs != active:
                problems.append("%s: %s backends %s, instances %s" % (
                    ap, sid, sorted(addrs), sorted(active)))
        ports = listening_ports(edge, ap, owners=True)
        live = {s["port"] for s in services if s["instances"]}
        if set(ports) - live:
            problems.append("%s: ports %s held for no service (%s; HAProxy's "
                            "processes: %s)" % (
                                ap, sorted(set(ports) - live),
                                "; ".join("%d: %s" % (p, ports[p])
                                          for p in sorted(set(ports) - live)),
                                haproxy_processes(edge, ap)))
    return problems


def haproxy_processes(edge, ap):
    """The AP's HAProxy master's ``show proc`` (its current and old
    workers, with their pids and reload counts), on one line: says whether
    a port's holder is the current worker or one left behind."""
    try:
        out = haproxy_mod.HAProxy._send(
            edge.path("nodes", ap, "run", "haproxy-master.sock"), "show proc; quit")
    except OSError as e:
        return "master not answering (%s)" % e
    return " | ".join(" ".join(line.split()) for line in out.splitlines() if line.strip())


def clean_up(edge, admin, timeout=240, log=print):
    """Leave the edge as the run found it, whatever state the run ended in:
    every daemon running, every node enabled, every service deleted (a
    busy one once its operation ends; forced if its delete fails), then
    nothing on the nodes the store does not have.  Never raises: a chaos
    run that failed must not wreck what runs next on the same edge (left
    services once filled every access point for the later tests); the
    problems left, for the caller to report."""
    deadline = time.monotonic() + timeout
    problems = []

    def retry(fn, *args):
        while True:
            try:
                return fn(*args)
            except client_mod.ApiError as e:
                if e.status not in (0, 409, 502, 503) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    try:
        if not edge._pid("manager"):
            edge.start_manager()
        for ap in edge.net.aps:
            if not edge._pid("agent-" + ap):
                edge.start_node_agent(ap)
        for node in retry(admin.nodes):
            if not node["schedulable"]:
                retry(admin.enable_node, node["name"])
        for svc in retry(admin.services):
            op = retry(admin.delete_service, svc["name"])["operation"]
            op = admin.wait(op["id"], max(1, deadline - time.monotonic()))
            if op["state"] != "SUCCEEDED":
                log("chaos: clean-up: delete of %s %s (%s): forcing"
                    % (svc["name"], op["state"], op.get("error")))
                op = retry(admin.delete_service, svc["name"], True)["operation"]
                admin.wait(op["id"], max(1, deadline - time.monotonic()))
        while True:
            problems = ["services left: %s" % [s["name"] for s in admin.services()]] \
                if admin.services() else []
            problems += consistency_problems(edge, admin)
            if not problems or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    except Exception as e:  # reported, never raised: see above
        problems.append("clean-up stopped: %s: %s" % (type(e).__name__, e))
    for p in problems:
        log("chaos: clean-up left: %s" % p)
    return problems


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        return probe_main(argv[1:])
    raise SystemExit("usage: python -m mec_conpaas.edge.chaos probe ...")


if __name__ == "__main__":
    main()
