"""The node agent's memory: what it costs and where it goes.

* A running node agent (ap-1 of a private embedded edge): VmRSS, VmHWM
  (peak) and PSS, idle after registering, after it created an instance
  (through virsh, no libvirt binding) and after a ``/metrics`` scrape; and its resident
  memory by mapping (``/proc/PID/smaps``: each shared library, the heap),
  so a reader sees what the number is made of.
* What each import costs: a child process imports, in the agent's order,
  oslo.config (stevedore deferred, as the agent's entry point does), the
  agent's modules, its container backend and
  prometheus_client, returns freed pages as the agent does once started,
  and reports VmRSS after each step.  (The agent no longer loads the
  libvirt binding: virsh starts and destroys containers.)
* Floor, in the same run: a bare interpreter of the same virtualenv (``python
  -c`` sleeping), the least any Python agent costs.  Ratio agent / floor.

Target (issue 13): node agent RSS <= 30 MB.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import requests  # noqa: E402

AGENT_PORT = 9681  # [node_agent] bind_port's default, as the edge runs it

STEPS = [
    ("interpreter (site)", None),
    # The agent's entry point defers oslo.config's stevedore (memory.py).
    ("stevedore deferred", "!defer"),
    ("oslo.config", "oslo_config.cfg"),
    ("mec_conpaas.conf", "mec_conpaas.conf"),
    ("agent modules", "mec_conpaas.agents.node.agent"),
    ("container backend", "mec_conpaas.agents.node.containers"),
    ("prometheus_client (/metrics)", "prometheus_client"),
    # What the agent does once started (agents/node/memory.py).
    ("freed pages returned (malloc_trim)", "!trim"),
]
PROBE = r"""
import importlib, json, sys
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
out = []
for label, module in json.loads(sys.argv[1]):
    if module == "!defer":
        from mec_conpaas.agents.node import memory
        memory.defer_import("stevedore")
    elif module == "!trim":
        from mec_conpaas.agents.node import memory
        memory.trim()
    elif module:
        importlib.import_module(module)
    out.append([label, round(rss(), 1)])
print(json.dumps(out))
"""


# Python's own allocations after the agent's imports, and how much of them
# is code read from .pyc files (unmarshalled by importlib's external loader).
ALLOCATED = r"""
import json, tracemalloc
from mec_conpaas.cmd import node_agent
from mec_conpaas.conf import parse_args
from mec_conpaas.agents.node import agent, containers
parse_args([])
stats = tracemalloc.take_snapshot().statistics("filename")
code = sum(s.size for s in stats
           if s.traceback[0].filename == "<frozen importlib._bootstrap_external>")
print(json.dumps({"allocated_mb": round(sum(s.size for s in stats) / 2**20, 1),
                  "code_objects_mb": round(code / 2**20, 1)}))
"""


def python_allocations():
    """MB Python allocated starting and importing the agent (no libvirt),
    and of it the modules' code (tracemalloc from the interpreter's start,
    in a fresh one)."""
    return json.loads(subprocess.run([sys.executable, "-X", "tracemalloc", "-c",
                                      ALLOCATED],
                                     capture_output=True, text=True,
                                     check=True).stdout)


def import_steps():
    """[(step, VmRSS MB after it, MB it added)] in a fresh interpreter."""
    got = json.loads(subprocess.run([sys.executable, "-c", PROBE, json.dumps(STEPS)],
                                    capture_output=True, text=True, check=True).stdout)
    return [{"step": label, "rss_mb": rss,
             "added_mb": round(rss - (got[i - 1][1] if i else 0), 1)}
            for i, (label, rss) in enumerate(got)]


def floor_rss():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(1.0)
        return common.proc_memory(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def by_mapping(pid, top=10):
    """Resident MB per mapped file (anonymous memory as [anon]/[heap])."""
    sizes, name = {}, None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:
                name = fields[5] if len(fields) > 5 else "[anon]"
                name = os.path.basename(name) if name.startswith("/") else name
            elif fields[0] == "Rss:":
                sizes[name] = sizes.get(name, 0) + int(fields[1])
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])
    rest = sum(v for _, v in ranked[top:])
    return dict([(k, round(v / 1024, 1)) for k, v in ranked[:top]]
                + [("(rest)", round(rest / 1024, 1))])


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="accepted for symmetry; "
                   "the run is short either way")
    p.add_argument("--no-edge", action="store_true",
                   help="only the floor and the import steps (no embedded edge, "
                        "so no lock on it needed); no running agent")
    args = p.parse_args()
    load_start = os.getloadavg()
    floor = floor_rss()
    steps = import_steps()
    agent, status = (None, None) if args.no_edge else running_agent()
    peak = agent["peak_rss_mb"] if agent else None
    summary = {
        "benchmark": "footprint",
        "node_agent": agent,
        "import_steps": steps,
        "imports_rss_mb": steps[-1]["rss_mb"],
        "python_allocations_at_import": python_allocations(),
        "floor_bare_interpreter": floor,
        "ratio_peak_vs_floor": round(peak / floor["rss_mb"], 2) if agent else None,
        "ratio_imports_vs_floor": round(steps[-1]["rss_mb"] / floor["rss_mb"], 2),
        "target_rss_mb": 30,
        "target_met": peak <= 30 if agent else None,
        "target_met_no_instance": agent["peak_rss_mb_no_instance"] <= 30
        if agent else None,
        "latency_shaping": common.shaping_note(status) if status else None,
        "machine": common.machine(),
        "loadavg_at_start": [round(x, 2) for x in load_start],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "shared": "other jobs may share the cores: see the load averages",
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    def plot(ax):
        labels = [s["step"] for s in steps]
        ax.barh(labels, [s["added_mb"] for s in steps], color="#3b7dd8")
        ax.invert_yaxis()
        ax.set_xlabel("MB resident added by the step (fresh interpreter)")
        ax.set_title("Node agent imports: %.0f MB (target 30), floor %d MB%s" % (
            steps[-1]["rss_mb"], floor["rss_mb"],
            ", running peak %d MB" % peak if agent else ""))
    common.write("footprint", summary, plot)


def running_agent():
    """ap-1's node agent on a private embedded edge, idle, with an
    instance, after a scrape; and where its resident memory lies."""
    with common.BenchEdge("mcf-", 9695) as b:
        c, edge = b.client, b.edge
        time.sleep(3)  # a few heartbeats
        pid = edge._pid("agent-ap-1")
        idle = common.proc_memory(pid)
        token = open(edge.path("nodes", "ap-1", "node-agent.token")).read().strip()

        def scrape():
            resp = requests.get("http://%s:%d/metrics" % (
                edge.net.bridge_address("ap-1"), AGENT_PORT),
                headers={"Authorization": "Bearer " + token}, timeout=10)
            resp.raise_for_status()
            return common.proc_memory(pid)
        # A node hosting no instance (an AP that only proxies, or an idle
        # one): scraped, and asked for its instances (the manager's sweep).
        scraped_empty = scrape()
        idle_mappings = by_mapping(pid)
        c.wait(c.create_service("web", "fp", node="ap-1")["operation"]["id"])
        time.sleep(3)
        with_instance = common.proc_memory(pid)
        status = edge.status()
        scraped = scrape()
        mappings = by_mapping(pid)
        c.wait(c.delete_service("fp")["operation"]["id"])
    without = (idle, scraped_empty)
    return {"idle": idle, "after_metrics_scrape_no_instance": scraped_empty,
            "with_instance": with_instance, "after_metrics_scrape": scraped,
            "peak_rss_mb_no_instance": max(m["peak_rss_mb"] for m in without),
            "peak_rss_mb": max(m["peak_rss_mb"] for m in without + (with_instance,
                                                                    scraped)),
            "rss_by_mapping_mb_no_instance": idle_mappings,
            "rss_by_mapping_mb": mappings}, status


if __name__ == "__main__":
    main()
