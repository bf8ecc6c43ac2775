"""Control-plane scale: the manager with 1,000 emulated node agents, and
an auto-scaling round over 128 containers on one node.

Part 1.  A real ``mec-conpaas-manager`` (its own store and port on
loopback) and N emulated node agents: asyncio coroutines speaking the real
agent protocol (``POST /v1/nodes/join`` with a join token for the node's own
credential, ``POST /v1/nodes/register``, then a heartbeat every 2 s) over
HTTP/1.1 keep-alive connections and UDP; no containers.  A heartbeat is
what the node agent sends (agents/node/liveness.py, its own ``Beacon`` and
``fingerprint``): a liveness datagram when the report kept its shape and
the last one was acked, else ``POST /v1/nodes/<id>/heartbeat`` with a
report of the node agent's shape, capacity included.  Agents' full-report
phases are spread over the interval the manager advertises, as agents
started at different times are; the agents power on at 5 a second (a
fleet switched on, not 1,000 joins in the same instant).  ``http`` (with
``--compare-http``, in the
same run): the same agents with every heartbeat over HTTP, what agents of
before the datagrams (or ``[liveness] enabled = false``) send.  Measured
while they heartbeat:

* the manager's CPU (utime+stime from /proc over the window, % of one
  core) and memory (RSS/PSS), against the same manager idle with no agent
  (``manager_cpu_percent_idle``: measured first, ``SETTLE_S`` after its
  receiver process started) and with 3 agents (the floor, same run);
* heartbeat round-trip times as the agents see them;
* placement decision time: ``Services.place`` (the code every create,
  scale and heal uses) against the store the manager is writing, split
  into reading the observed state and the decision itself, and ENORM
  admission on a full node (``manager/qos.admit``, eviction targets
  included), in a process of its own (not sharing the GIL with the
  agents); floor: the same on a 3-node edge in the same run; peer: seed
  002's peer selection, 586 ms.

Part 2.  One auto-scaling round over 128 containers on one node: real
cgroups (v1 cpu and memory, one pair per container) each holding a real
process (``sleep``), no libvirt.  The round is the policy
(``policies/autoscale.plan``) plus the live resize of every container it
decides on (``agents/node/cgroups.resize``, what the node agent's resize
does for a libvirt or nova container).  Its input latencies are drawn
(seeded) so that every container either misses its objective or meets it
comfortably: all 128 are resized.  Floor: the same round over one
container; peer: ENORM's 11 s for 128 (5.3 s for one).

``--quick``: 100 agents, a 10 s window, 32 containers.  Results:
bench/results/scale.json and .png; the summary JSON is the last line.
"""
import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from mec_conpaas.agents.node import cgroups  # noqa: E402
from mec_conpaas.agents.node import liveness  # noqa: E402
from mec_conpaas.policies import autoscale  # noqa: E402

SEED_002_PEER_SELECTION_MS = 586   # seed 002, peer selection
ENORM_ROUND_128_S = 11.0           # seed 004, auto-scaling 128 containers
ENORM_ROUND_1_S = 5.3              # seed 004, one container
HEARTBEAT_S = 2.0
JOIN_RATE = 5.0                    # agents powering on per second
SETTLE_S = 3.0                     # after the start, before the idle window


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def topology(path, n):
    """n access points on a ring of 2 ms links (each AP a few hops from
    the others, as on a campus backbone), the master off the first."""
    names = ["ap-%04d" % i for i in range(1, n + 1)]
    nodes = {a: {"instance_network": "10.%d.%d.0/24" % (100 + i // 250, i % 250)}
             for i, a in enumerate(names)}
    links = [{"a": "master", "b": names[0], "latency_ms": 1}]
    links += [{"a": names[i], "b": names[(i + 1) % n], "latency_ms": 2}
              for i in range(n if n > 2 else n - 1)]
    import yaml
    with open(path, "w") as f:
        yaml.safe_dump({"nodes": nodes, "links": links}, f)
    return names, {a: v["instance_network"] for a, v in nodes.items()}


class Manager:
    """A real manager process on loopback with its own store."""

    def __init__(self, n):
        self.dir = tempfile.mkdtemp(prefix="mec-bench-scale-")
        self.port = free_port()
        self.names, self.networks = topology(os.path.join(self.dir, "topology.yaml"), n)
        self.conf = os.path.join(self.dir, "mec-conpaas.conf")
        with open(self.conf, "w") as f:
            f.write("[DEFAULT]\nstate_path = %s\nrun_path = %s/run\n"
                    "[api]\nbind_host = 127.0.0.1\nbind_port = %d\n"
                    "[manager]\ntopology_file = %s/topology.yaml\n"
                    # no container anywhere: nothing to sweep or snapshot
                    "orphan_sweep_interval = 86400\nnode_lost_grace = 0\n"
                    "node_heartbeat_timeout = 10\n"
                    "[liveness]\nlisten = true\nport = %d\n" % (
                        self.dir, self.dir, self.port, self.dir, free_udp_port()))
        manage = [tool("mec-conpaas-manage"), "--config-file", self.conf]
        subprocess.run(manage + ["db", "sync"], check=True, capture_output=True)
        # One join token for all: each agent joins with it and heartbeats
        # with the credential it gets (the key of its datagrams).
        self.node_token = subprocess.run(manage + ["node-token", "create", "--uses", "0"],
                                         check=True, capture_output=True,
                                         text=True).stdout.strip()
        self.log = open(os.path.join(self.dir, "manager.log"), "w")
        self.proc = subprocess.Popen([tool("mec-conpaas-manager"), "--config-file",
                                      self.conf], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)

    def settle(self, seconds=SETTLE_S):
        """Wait until the manager's liveness receiver runs, then ``seconds``:
        its idle CPU measured from the port's opening was mostly the
        start's tail (the receiver process importing, the first rounds)."""
        deadline = time.monotonic() + 60
        while len(self.pids()) < 2 and time.monotonic() < deadline:
            self.alive()
            time.sleep(0.1)
        time.sleep(seconds)

    def pids(self):
        """The manager and its children (the liveness receiver process):
        what the manager costs is all of them."""
        pids = [self.proc.pid]
        for task in os.listdir("/proc/%d/task" % self.proc.pid):
            try:
                with open("/proc/%d/task/%s/children" % (self.proc.pid, task)) as f:
                    pids += [int(p) for p in f.read().split()]
            except FileNotFoundError:
                pass
        return pids

    def cpu_seconds(self, pids=None):
        """{pid: CPU seconds} of the manager's processes."""
        return {pid: cpu_seconds("/proc/%d/stat" % pid) for pid in pids or self.pids()}

    def cpu_percent(self, seconds, during=None):
        """% of one core the manager's processes took over ``seconds``
        (each, and in total); ``during``: called with the seconds to fill
        (so other measures share the window)."""
        pids = self.pids()
        c0, t0 = self.cpu_seconds(pids), time.monotonic()
        if during:
            during(seconds)
        else:
            time.sleep(seconds)
        c1, dt = self.cpu_seconds(pids), time.monotonic() - t0
        each = {pid: round(100 * (c1[pid] - c0[pid]) / dt, 2) for pid in pids}
        return round(sum(each.values()), 2), each

    def alive(self):
        """Raise, with its log's tail, if the manager has exited."""
        if self.proc.poll() is not None:
            self.log.flush()
            with open(self.log.name) as f:
                tail = f.read()[-3000:]
            raise RuntimeError("the manager exited (%s): %s" % (self.proc.returncode, tail))

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def cpu_seconds(stat_path):
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy():
    """(busy, total) jiffies of the whole machine (every core)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


# -- emulated node agents ---------------------------------------------------
class Agent:
    """One emulated node agent: the real join, registration and heartbeat
    (datagram or HTTP, decided by the node agent's own code)."""

    def __init__(self, name, token, port, liveness=True):
        import uuid
        self.name, self.token, self.port = name, token, port
        self.join_token, self.liveness = token, liveness
        self.id = str(uuid.uuid5(uuid.NAMESPACE_DNS, name))
        self.rtts, self.errors, self.http_beats, self.join_errors = [], 0, 0, 0
        self.reader = self.writer = None
        self.beacon = None
        self.full_s = None
        self.routes_version, self.routes_received = None, 0
        # The credential it asks for, as the node agent does: a join retried
        # after a lost answer proves with it that it is the node let in.
        import secrets
        self.chosen = secrets.token_urlsafe(32)

    async def call(self, path, body):
        """(status, answer) of a POST on the keep-alive connection."""
        data = json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(
                        "127.0.0.1", self.port)
                self.writer.write((
                    "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                    "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                    % (path, self.token, len(data))).encode() + data)
                await self.writer.drain()
                status = int((await self.reader.readline()).split()[1])
                length = 0
                while (line := await self.reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                answer = await self.reader.readexactly(length)
                return status, json.loads(answer) if answer else None
            except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                self.writer = None
                if attempt == 2:
                    raise

    def registration(self):
        return {"id": self.id, "name": self.name, "hostname": self.name,
                "mac": "02:00:00:00:00:00", "address": "127.0.0.1", "agent_port": 9,
                "agent_token": "x" * 43, "container_backend": "libvirt",
                "instance_network": self.network, "max_instances": 8}

    @staticmethod
    def report():
        """A report of the real node agent's shape (agents/node/report.py
        plus capacity): a Raspberry Pi 3 with nothing running yet; its
        usage figures move, its shape does not."""
        return {"cpu_percent": round(random.uniform(1, 9), 1), "cpu_count": 4,
                "load": [0.1, 0.1, 0.1],
                "memory": {"total_bytes": 2 ** 30,
                           "available_bytes": 7 * 2 ** 27 - random.randrange(2 ** 20),
                           "swap_total_bytes": 0, "swap_free_bytes": 0},
                "disk": {"path": "/var/lib/mec-conpaas", "total_bytes": 2 ** 34,
                         "free_bytes": 2 ** 33},
                "containers": {}, "time": time.time(), "stations": [], "services": {},
                "capacity": {"cpus": 4.0, "memory_mb": 1024, "reserve_cpus": 0.5,
                             "reserve_memory_mb": 128, "held_cpus": 0.0,
                             "held_memory_mb": 0}}

    async def join(self, network):
        self.network = network
        status, answer = await self.call("/v1/nodes/join", {
            "id": self.id, "name": self.name, "identity": "bench-" + self.name,
            "hostname": self.name, "mac": "02:00:00:00:00:00",
            "instance_network": network, "credential": self.chosen})
        assert status == 200, (status, answer)
        self.token = answer["credential"]  # from here on, its own credential

    def heartbeat(self, conf):
        """The node agent's choice (NodeAgent._heartbeat): the datagram when
        the beacon says so; else None (send the full report)."""
        report = self.report()
        if self.beacon is not None and not self.beacon.needs_full(
                liveness.fingerprint(report), self.full_s):
            self.beacon.beat()
            return None
        return report

    async def full(self, report, conf, first=False):
        sent_at = time.time()
        body = {"report": report}
        if self.routes_version:  # as the node agent echoes it (routecache)
            body["routes_version"] = self.routes_version
        status, answer = await self.call("/v1/nodes/%s/heartbeat" % self.id, body)
        if status != 200:
            self.errors += 1
            return
        self.http_beats += 1
        if "routes" in answer:
            self.routes_version = answer.get("routes_version")
            self.routes_received += 1
        self.rtts.append((time.time() - sent_at) * 1000)
        if not self.liveness:
            return
        self.beacon = liveness.for_answer(self.beacon, answer, self.id, self.token, conf)
        self.full_s = liveness.full_interval(answer, conf)
        if self.beacon is not None:
            self.writer.close()  # as the node agent hangs up (httpserver.hang_up)
            self.writer = None
            now = time.time()
            self.beacon.synced(answer["liveness"]["clock"], sent_at, now,
                               liveness.fingerprint(report))
            if first:  # full-report phases spread as agents started apart are
                self.beacon.last_full = now - random.uniform(0, self.full_s)

    async def run(self, stop, started, conf, network, start_at=0.0):
        await asyncio.sleep(start_at + random.random() * HEARTBEAT_S)
        delay = 2.0
        while True:  # as the node agent does: retry, backing off
            try:
                if self.token == self.join_token:
                    await self.join(network)
                status, answer = await self.call("/v1/nodes/register",
                                                 self.registration())
                assert status == 200, (status, answer)
                await self.full(self.report(), conf, first=True)
                break
            except Exception as e:
                self.join_errors += 1
                if stop.is_set():
                    print("agent %s: %r" % (self.name, e), file=sys.stderr)
                    return
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 16)
        started.append(self.name)
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                report = self.heartbeat(conf)
                if report is not None:
                    await self.full(report, conf)
            except Exception:
                self.errors += 1
            try:
                await asyncio.wait_for(stop.wait(), max(0, HEARTBEAT_S -
                                                        (time.monotonic() - t0)))
            except asyncio.TimeoutError:
                pass

    def beats(self):
        """Heartbeats the manager took: full reports and acked datagrams."""
        return self.http_beats + (self.beacon.acks if self.beacon else 0)

    def reset(self):
        self.rtts.clear()
        self.http_beats = self.routes_received = 0
        if self.beacon:
            self.beacon.acks = 0


def run_agents(mgr, n, until, liveness_on=True):
    """Agents heartbeating in a thread's event loop until ``until`` is set."""
    import threading

    from mec_conpaas import conf as conf_mod
    conf = conf_mod.parse_args(["--config-file", mgr.conf])
    conf.set_override("manager_url", "http://127.0.0.1:%d/" % mgr.port,
                      group="node_agent")
    conf.set_override("enabled", liveness_on, group="liveness")
    agents = [Agent(name, mgr.node_token, mgr.port, liveness_on)
              for name in mgr.names[:n]]
    started = []
    state = {}

    def main():
        state["tid"] = threading.get_native_id()

        async def go():
            stop = asyncio.Event()
            state["stop"], state["loop"] = stop, asyncio.get_running_loop()
            # The fleet powers on at JOIN_RATE nodes a second, not all in
            # the same instant: a storm of 1,000 joins at once measures the
            # storm (every waiting agent holds a connection the server's
            # loop walks), not the steady state.
            await asyncio.gather(*(a.run(stop, started, conf, mgr.networks[a.name],
                                         k / JOIN_RATE)
                                   for k, a in enumerate(agents)))
        asyncio.run(go())
    t = threading.Thread(target=main, daemon=True)
    t.start()

    def finish():
        if not state["loop"].is_closed():  # closed: every agent has ended
            state["loop"].call_soon_threadsafe(state["stop"].set)
        t.join(30)
        for a in agents:
            if a.beacon:
                a.beacon.close()
        conf.clear()
    until.append(finish)
    while "tid" not in state:
        time.sleep(0.01)
    agents_stat = "/proc/self/task/%d/stat" % state["tid"]
    return agents, started, agents_stat


# -- placement and admission against the manager's store ---------------------
def decision_times(conf_path, home, repeat):
    """Placement (gather + decide) and admission times, ms, in this process
    against the manager's store."""
    from mec_conpaas import conf as conf_mod
    from mec_conpaas import drivers
    from mec_conpaas.db.session import session_scope
    from mec_conpaas.manager import cluster as cluster_mod
    from mec_conpaas.manager import qos
    from mec_conpaas.manager import services as services_mod
    from mec_conpaas.policies import admission
    from mec_conpaas.policies import placement
    conf = conf_mod.parse_args(["--config-file", conf_path])
    cluster = cluster_mod.Cluster(conf, drivers.load(conf.manager.driver, conf))
    svcs = services_mod.Services(cluster)
    need = (conf.manager.instance_cpus, conf.manager.instance_memory_mb)
    out = {"end_to_end": [], "gather": [], "decide": [], "admission": [],
           "end_to_end_cpu": []}
    with session_scope() as s:  # warm: the first read of a process is not one
        svcs.place(s, 1, home, need=need)
    for _ in range(repeat):
        with session_scope() as s:
            c0 = time.process_time()
            t0 = time.perf_counter()
            svcs.place(s, 1, home, need=need)
            t1 = time.perf_counter()
            c1 = time.process_time()
            cap = cluster.capacity(s)
            dist = cluster.distances(list(cap), sources=[home])
            t2 = time.perf_counter()
            chosen = placement.place(1, home, cap, dist, need=need)
            t3 = time.perf_counter()
            nodes = qos.view(s, cluster)
            full = dict(nodes[home], containers={
                "x%d" % k: {"service": "low", "priority": 10, "cpus": 0.5,
                            "memory_mb": 128, "seq": k} for k in range(7)})
            t4 = time.perf_counter()
            d = admission.admit(home, full, *need, 90, dict(nodes, **{home: full}),
                                cluster.distances(list(nodes), sources=[home]))
            t5 = time.perf_counter()
        assert chosen and d.admit and d.evict, (chosen, d)
        out["end_to_end"].append((t1 - t0) * 1000)
        # CPU time of the same call: what it costs, whatever else waits for
        # the 2 cores (wall time on a loaded machine includes the run queue)
        out["end_to_end_cpu"].append((c1 - c0) * 1000)
        out["gather"].append((t2 - t1) * 1000)
        out["decide"].append((t3 - t2) * 1000)
        out["admission"].append((t5 - t4) * 1000)
    conf.clear()
    from mec_conpaas.db import session as db
    db.reset()
    return {k: stats(v) for k, v in out.items()}


def decision_times_apart(conf_path, home, repeat):
    """``decision_times`` in a process of its own: in this one it would
    share the GIL with the agents' event loop, and measure that."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--decisions",
                          conf_path, home, str(repeat)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def stats(values):
    values = sorted(values)
    return {"median": round(statistics.median(values), 3),
            "p95": round(values[min(len(values) - 1, int(0.95 * len(values)))], 3),
            "n": len(values)}


def part1(n, window, compare_http=False):
    out = {}
    runs = [("floor_3_nodes", 3, True), ("ours", n, True)]
    if compare_http:
        runs.append(("http", n, False))
    for label, count, liveness_on in runs:
        mgr = Manager(count)
        try:
            mgr.settle()
            idle_cpu, _ = mgr.cpu_percent(min(window, 5))
            stops = []
            agents, started, agents_stat = run_agents(mgr, count, stops, liveness_on)
            # A loaded machine's manager takes minutes to enroll 1,000
            # nodes (join + register, each reading the allocations).
            t_reg = time.monotonic()
            deadline = t_reg + 60 + count
            while len(started) < count and time.monotonic() < deadline:
                time.sleep(1)
                mgr.alive()
            registration_s = round(time.monotonic() - t_reg, 1)
            print("%s: %d of %d agents registered" % (label, len(started), count),
                  file=sys.stderr)
            registered = len(started)
            time.sleep(2 * HEARTBEAT_S)  # every agent has heartbeated
            for a in agents:
                a.reset()
            mgr.alive()
            load0 = common.loadavg()
            a0, m0 = cpu_seconds(agents_stat), machine_busy()
            cpu, cpu_each = mgr.cpu_percent(window)
            a1, m1 = cpu_seconds(agents_stat), machine_busy()
            agents_cpu = round(100 * (a1 - a0) / window, 2)
            ncpu = os.cpu_count()
            machine_pct = round(100 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]), 1)
            beats = sum(a.beats() for a in agents)
            http = sum(a.http_beats for a in agents)
            mgr.alive()
            pids = mgr.pids()
            mem = common.proc_memory(mgr.proc.pid)
            mem_each = {pid: common.proc_memory(pid) for pid in pids}
            for k in ("rss_mb", "pss_mb"):  # the manager is all its processes
                mem["total_" + k] = sum(m[k] for m in mem_each.values())
            up = nodes_up(mgr.conf)
            decisions = decision_times_apart(mgr.conf, sorted(started)[len(started) // 2],
                                             100)
            stops[0]()
            rtts = [r for a in agents for r in a.rtts]
            out[label] = {
                "nodes": count, "registered": registered, "nodes_up_at_end": up,
                "registration_s": registration_s,
                "liveness_datagrams": liveness_on,
                "heartbeats_per_s": round(beats / window, 1),
                "http_heartbeats_per_s": round(http / window, 1),
                "datagrams_acked_per_s": round((beats - http) / window, 1),
                "heartbeats_per_s_wanted": round(count / HEARTBEAT_S, 1),
                "full_report_s": max((a.full_s or 0) for a in agents),
                "heartbeat_errors": sum(a.errors for a in agents),
                "join_or_register_retries": sum(a.join_errors for a in agents),
                "http_heartbeat_rtt_ms": stats(rtts) if rtts else None,
                "manager_cpu_percent_idle": idle_cpu,
                "manager_cpu_percent": cpu,
                "manager_processes": {
                    "api" if pid == mgr.proc.pid else "liveness_receiver": {
                        "cpu_percent": cpu_each.get(pid), **mem_each[pid]}
                    for pid in pids},
                "manager_memory": mem,
                "agents_cpu_percent_of_one_core": agents_cpu,
                "agents_share_of_machine_percent": round(agents_cpu / ncpu, 1),
                "manager_share_of_machine_percent": round(cpu / ncpu, 1),
                "machine_busy_percent": machine_pct,
                "loadavg_window_start": load0, "loadavg_window_end": common.loadavg(),
                # answers that carried the routes, in the window (others: version only)
                "routes_answers_in_window": sum(a.routes_received for a in agents),
                "placement_ms": decisions}
            print(label, json.dumps({k: v for k, v in out[label].items()
                                     if k != "placement_ms"}), file=sys.stderr)
        finally:
            mgr.close()
    return out


def nodes_up(conf_path):
    """Nodes the manager's store counts up (heard within the timeout)."""
    from mec_conpaas import conf as conf_mod
    from mec_conpaas import drivers
    from mec_conpaas.db import session as db
    from mec_conpaas.db.session import session_scope
    from mec_conpaas.manager import cluster as cluster_mod
    conf = conf_mod.parse_args(["--config-file", conf_path])
    cluster = cluster_mod.Cluster(conf, drivers.load(conf.manager.driver, conf))
    with session_scope() as s:
        up = len(cluster.nodes(s, up_only=True))
    conf.clear()
    db.reset()
    return up


# -- one auto-scaling round over real cgroups ----------------------------------
class Containers:
    """n cgroup pairs (cpu, memory) each with a sleeping process in it."""

    def __init__(self, n, base_cpus, base_mb):
        self.root = {c: os.path.join(cgroups.ROOT, c, "mec-bench-scale-%d" % os.getpid())
                     for c in ("cpu", "memory")}
        self.dirs, self.procs = {}, []
        for i in range(n):
            d = {c: os.path.join(r, "c%03d" % i) for c, r in self.root.items()}
            for path in d.values():
                os.makedirs(path)
            cgroups.resize(d, base_cpus, base_mb)
            p = subprocess.Popen(["sleep", "600"])
            for path in d.values():
                with open(os.path.join(path, "cgroup.procs"), "w") as f:
                    f.write(str(p.pid))
            assert cgroups.dirs(p.pid) == d, (cgroups.dirs(p.pid), d)
            self.dirs["c%03d" % i] = d
            self.procs.append(p)

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        for d in self.dirs.values():
            for path in d.values():
                for _ in range(50):
                    try:
                        os.rmdir(path)
                        break
                    except OSError:
                        time.sleep(0.02)
        for r in self.root.values():
            os.rmdir(r)


def one_round(n, rng, unit_cpus=0.25, unit_mb=32, base_cpus=0.25, base_mb=64):
    """Time (s) of a round over n containers, each resized; checks every
    container's cgroups have what the round decided."""
    box = Containers(n, base_cpus + unit_cpus, base_mb + unit_mb)
    try:
        objective = 20.0
        # missing (grow) or comfortably met (shrink), none in between
        lat = {i: rng.choice((rng.uniform(objective * 1.1, objective * 5),
                              rng.uniform(0.5, objective * 0.45)))
               for i in box.dirs}
        node = {"cpus": 2.0 * n + 1, "memory_mb": 256 * n + 128, "reserve_cpus": 1.0,
                "reserve_memory_mb": 128,
                "containers": {i: {"service": i, "priority": 50,
                                   "cpus": base_cpus + unit_cpus,
                                   "memory_mb": base_mb + unit_mb,
                                   "base_cpus": base_cpus, "base_memory_mb": base_mb,
                                   "latency_ms": lat[i], "objective_ms": objective}
                               for i in box.dirs}}
        t0 = time.perf_counter()
        decisions = autoscale.plan("node", node, unit_cpus, unit_mb)
        t1 = time.perf_counter()
        for d in decisions:
            cgroups.resize(box.dirs[d["id"]], d["cpus"], d["memory_mb"])
        t2 = time.perf_counter()
        assert len(decisions) == n, decisions
        for d in decisions:
            got = cgroups.limits(box.dirs[d["id"]])
            assert got == {"cpus": round(d["cpus"], 4), "memory_mb": d["memory_mb"]}, got
        return {"seconds": round(t2 - t0, 4), "policy_s": round(t1 - t0, 4),
                "resize_s": round(t2 - t1, 4),
                "grown": sum(d["action"] == "grow" for d in decisions),
                "shrunk": sum(d["action"] == "shrink" for d in decisions)}
    finally:
        box.close()


def part2(n, repeat=5):
    rng = random.Random(12)
    ours = [one_round(n, rng) for _ in range(repeat)]
    floor = [one_round(1, rng) for _ in range(repeat)]
    return {"containers": n, "rounds": ours,
            "median_s": statistics.median(r["seconds"] for r in ours),
            "floor_1_container_median_s": statistics.median(r["seconds"] for r in floor),
            "method": "real cgroups (v1 cpu+memory), one sleeping process in each; "
                      "no libvirt"}


def main():
    if sys.argv[1:2] == ["--decisions"]:  # decision_times_apart's process
        conf_path, home, repeat = sys.argv[2:5]
        print(json.dumps(decision_times(conf_path, home, int(repeat))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nodes", type=int)
    ap.add_argument("--window", type=float, help="seconds CPU is measured over")
    ap.add_argument("--containers", type=int)
    ap.add_argument("--compare-http", action="store_true",
                    help="also the same agents with HTTP heartbeats only")
    ap.add_argument("--name", help="result file name (default: scale, or scale-quick "
                                   "with --quick)")
    common.add_quiet_args(ap)
    args = ap.parse_args()
    n = args.nodes or (100 if args.quick else 1000)
    window = args.window or (10 if args.quick else 30)
    containers = args.containers or (32 if args.quick else 128)
    quiet = common.quiet_from(args)
    t0 = time.monotonic()
    p1 = part1(n, window, args.compare_http)
    p2 = part2(containers)
    ours, floor = p1["ours"], p1["floor_3_nodes"]
    summary = {
        "bench": "scale", "quick": args.quick, "machine": common.machine(),
        "nodes": n, "window_s": window, "heartbeat_s": HEARTBEAT_S,
        "control_plane": p1, "autoscale_round": p2,
        "placement_decision_ms": ours["placement_ms"]["end_to_end"]["median"],
        "placement_target_ms": 10,
        "placement_vs_floor_ratio": round(
            ours["placement_ms"]["end_to_end"]["median"]
            / max(1e-6, floor["placement_ms"]["end_to_end"]["median"]), 1),
        "placement_vs_seed002": round(ours["placement_ms"]["end_to_end"]["median"]
                                      / SEED_002_PEER_SELECTION_MS, 4),
        "placement_decide_only_ms": ours["placement_ms"]["decide"]["median"],
        "placement_decision_cpu_ms": ours["placement_ms"]["end_to_end_cpu"]["median"],
        "placement_floor_cpu_ms": floor["placement_ms"]["end_to_end_cpu"]["median"],
        "heartbeats_per_s": ours["heartbeats_per_s"],
        "heartbeats_per_s_wanted": ours["heartbeats_per_s_wanted"],
        "http_heartbeats_per_s": ours["http_heartbeats_per_s"],
        "nodes_up_at_end": ours["nodes_up_at_end"],
        "manager_cpu_percent": ours["manager_cpu_percent"],
        "manager_cpu_target_percent": 10,
        "http_only": {k: p1["http"][k] for k in (
            "heartbeats_per_s", "manager_cpu_percent", "nodes_up_at_end")} | {
            "placement_ms": p1["http"]["placement_ms"]["end_to_end"]["median"],
            "rss_mb": p1["http"]["manager_memory"]["rss_mb"]}
        if "http" in p1 else None,
        "manager_cpu_floor_percent": floor["manager_cpu_percent"],
        "manager_rss_mb": ours["manager_memory"]["rss_mb"],
        "autoscale_round_s": p2["median_s"], "autoscale_target_s": 0.5,
        "autoscale_vs_floor_ratio": round(p2["median_s"] / max(
            1e-6, p2["floor_1_container_median_s"]), 1),
        "autoscale_vs_enorm": round(p2["median_s"] / ENORM_ROUND_128_S, 5),
        "peers": {"seed002_peer_selection_ms": SEED_002_PEER_SELECTION_MS,
                  "enorm_round_128_s": ENORM_ROUND_128_S,
                  "enorm_round_1_s": ENORM_ROUND_1_S},
        "duration_s": round(time.monotonic() - t0, 1),
        **quiet, "loadavg_at_end": common.loadavg(),
        **common.load_note(quiet["loadavg_at_start"][0], common.loadavg()[0]),
        "agents_cpu_percent_of_one_core": ours["agents_cpu_percent_of_one_core"],
        "agents_share_of_machine_percent": ours["agents_share_of_machine_percent"],
        "manager_total_rss_mb": ours["manager_memory"]["total_rss_mb"]}

    def plot(ax):
        labels = ["placement\n%d nodes" % n, "placement\n3 nodes\n(floor)",
                  "seed 002\npeer sel.", "autoscale\n%d ctrs" % containers,
                  "autoscale\n1 ctr\n(floor)", "ENORM\n128 ctrs"]
        values = [summary["placement_decision_ms"],
                  floor["placement_ms"]["end_to_end"]["median"],
                  SEED_002_PEER_SELECTION_MS, p2["median_s"] * 1000,
                  p2["floor_1_container_median_s"] * 1000, ENORM_ROUND_128_S * 1000]
        colors = ["tab:blue", "tab:gray", "tab:red"] * 2
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        for i, v in enumerate(values):
            ax.text(i, v, "%.3g" % v, ha="center", va="bottom", fontsize=7)
        http = summary["http_only"]
        ax.set_title("Control plane, %d agents: %.0f of %.0f heartbeats/s, manager CPU "
                     "%.1f%% of a core (idle %.1f%%)%s" % (
                         n, ours["heartbeats_per_s"], ours["heartbeats_per_s_wanted"],
                         ours["manager_cpu_percent"], ours["manager_cpu_percent_idle"],
                         "\nHTTP heartbeats only: %.0f/s, CPU %.1f%%" % (
                             http["heartbeats_per_s"], http["manager_cpu_percent"])
                         if http else ""), fontsize=8)
    common.write(args.name or ("scale-quick" if args.quick else "scale"), summary, plot)


if __name__ == "__main__":
    main()
