"""Shared benchmark plumbing: a private edge, memory sampling, results.

Every benchmark brings up its own embedded edge (own namespace prefix and
address plan), measures our system and its floor in the same run, writes
JSON and a PNG under bench/results/ and prints its summary as one JSON
object on its last line.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mec_conpaas.cli import client as client_mod  # noqa: E402
from mec_conpaas.edge import cluster  # noqa: E402
from mec_conpaas.edge import slots  # noqa: E402
from mec_conpaas.manager import topology as topology_mod  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ISOLATED = os.path.join(os.path.dirname(topology_mod.DEFAULT),
                        "edge-topology-isolated.yaml")


def machine():
    return {"cpus": os.cpu_count(), "machine": platform.machine(),
            "kernel": platform.release(), "python": platform.python_version(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                            / 2**30, 1)}


def wait_quiet(limit=3.0, max_wait=600.0, interval=10.0, waited_before=0.0):
    """Before a benchmark whose target is a latency figure: wait (at most
    ``max_wait`` s) for the 1-min load average to drop below ``limit``, as
    the machine is shared.  Returns what to record in the result: the load
    at the start, how long it waited (``waited_before``: seconds waited
    already, e.g. before taking an edge slot) and whether the load did
    drop."""
    t0 = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < max_wait:
        time.sleep(interval)
    load = os.getloadavg()
    return {"loadavg_at_start": [round(x, 2) for x in load],
            "waited_for_quiet_s": round(time.monotonic() - t0 + waited_before, 1),
            "quiet_limit": limit, "was_quiet_at_start": load[0] < limit}


def load_note(load_at_start, load_at_end, limit=3.0):
    """Whether the run shared the machine, from the 1-min loads it recorded
    rather than a sentence typed into the script: a run is called quiet when
    the load was under ``limit`` at its start and at its end."""
    return {"shared_machine": max(load_at_start, load_at_end) >= limit,
            "load_note": "1-min load %.2f at the start, %.2f at the end (quiet below %g)"
                         % (load_at_start, load_at_end, limit)}


def add_quiet_args(parser):
    """--wait-quiet and --waited-before, for ``quiet_from``."""
    parser.add_argument("--wait-quiet", type=float, default=600,
                        help="seconds to wait at most for the 1-min load to drop below 3")
    parser.add_argument("--waited-before", type=float, default=0,
                        help="seconds already waited for it (e.g. before taking an "
                             "edge slot)")


def quiet_from(args):
    return wait_quiet(max_wait=args.wait_quiet, waited_before=args.waited_before)


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


class BenchEdge:
    """A private embedded edge (own prefix, slot-moved port and addresses)
    with an admin client; benches and the functional tests that need an
    edge of their own (cloud topology, TLS) share it."""

    def __init__(self, prefix, port, node_agent_opts=None, topology=ISOLATED,
                 tls=None, **manager_opts):
        self.state = tempfile.mkdtemp(prefix="mec-bench-")
        prefix, port, topology = slots.apply(prefix, port, topology, self.state)
        self.edge = cluster.Edge(self.state, topology, prefix=prefix,
                                 manager_port=port, manager_opts=manager_opts,
                                 node_agent_opts=node_agent_opts,
                                 log=lambda m: print("edge:", m, file=sys.stderr),
                                 user_credentials=False, tls=tls)

    def __enter__(self):
        self.status = self.edge.up()
        token = open(self.edge.path("admin-token")).read().strip()
        self.client = client_mod.Client(
            self.edge.manager_url(), token,
            ca_cert=self.edge.tls.ca_file if self.edge.tls else None)
        return self

    def __exit__(self, *exc):
        self.edge.down(quiet=True)
        if os.environ.get("MEC_EDGE_KEEP_STATE"):
            # Logs (manager, agents, HAProxy request logs) for a failure's
            # diagnosis; the containers and namespaces are gone already.
            print("edge: state kept in %s" % self.state, file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", self.state])


def proc_memory(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) // 1024
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) // 1024
    return {"rss_mb": out["VmRSS"], "peak_rss_mb": out["VmHWM"], "pss_mb": out["Pss"]}


class MemorySampler:
    """Peak RSS/PSS of the manager and one node agent over a run."""

    def __init__(self, edge, names=("manager", "agent-ap-1")):
        self.edge = edge
        self.names = names
        self.idle = {n: proc_memory(edge._pid(n)) for n in names}
        self.peak = {n: dict(v) for n, v in self.idle.items()}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.2):
            for n in self.names:
                pid = self.edge._pid(n)
                if pid:
                    m = proc_memory(pid)
                    p = self.peak[n]
                    p["peak_rss_mb"] = max(p["peak_rss_mb"], m["peak_rss_mb"])
                    p["pss_mb"] = max(p["pss_mb"], m["pss_mb"])

    def finish(self):
        self.stop.set()
        self.thread.join()
        return {"idle": self.idle, "during_run": self.peak}


def shaping_note(status):
    s = status["latency_shaping"]
    return {"method": s["method"], "active": s["active"], "note": s["note"],
            "master_to_ap_rtt": s["master_to_ap_rtt"]}


def write(name, summary, plot):
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name + ".json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    png(name, plot)
    print(json.dumps(summary, sort_keys=True))


def png(name, plot):
    """bench/results/NAME.png, drawn by ``plot(ax)``."""
    os.makedirs(RESULTS, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    plot(ax)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, name + ".png"), dpi=100)
    plt.close(fig)


def wait_http_200(url, edge, timeout=120, interval=0.02):
    import urllib.parse
    import urllib.request
    host = urllib.parse.urlsplit(url).hostname
    if not edge.net.routed_locally(host):
        raise RuntimeError("%s is not routed through the edge's own link: "
                           "refusing to send traffic off this machine" % host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(interval)
    raise RuntimeError("no HTTP 200 from %s within %ds" % (url, timeout))
