"""The node agent's memory: what it costs and where it goes.

* A running node agent (ap-1 of a private embedded edge): VmRSS, VmHWM
  (peak) and PSS, idle after registering, after a ``/metrics`` scrape,
  with an instance (started through virsh: no libvirt binding in the
  agent), after a scrape and after the instance's delete; and its
  resident memory by mapping (``/proc/PID/smaps``: each shared library,
  the heap), so a reader sees what the number is made of.
* The same agent started again from ``--debian-venv`` (Debian's own
  ``/usr/bin/python3``, which deployed nodes and images run; the embedded
  edge's virtualenv may have another interpreter, e.g. pyenv's with a
  shared libpython), measured the same way in the same run.
* What each import costs, under each interpreter: a child process
  imports, in the agent's order, oslo.config (stevedore, ssl and tarfile
  deferred, as the agent's entry point does), the agent's modules, its
  container backend and its metrics module, returns freed pages as the
  agent does once started, and reports VmRSS after each step.
* Floor, in the same run: a bare interpreter of each virtualenv (``python
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT_PORT = 9681  # [node_agent] bind_port's default, as the edge runs it

STEPS = [
    ("interpreter (site)", None),
    # The agent's entry point defers oslo.config's stevedore, ssl and
    # tarfile (memory.AGENT_DEFERRED).
    ("ctypes, stevedore/ssl/tarfile deferred (memory.py)", "!defer"),
    ("oslo.config", "oslo_config.cfg"),
    ("mec_conpaas.conf", "mec_conpaas.conf"),
    ("agent modules", "mec_conpaas.agents.node.agent"),
    ("container backend", "mec_conpaas.agents.node.containers"),
    # Its own text writer since session 12 (no prometheus_client: its ssl
    # and urllib.request brought OpenSSL's libcrypto).
    ("metrics module (first /metrics scrape)", "mec_conpaas.agents.node.metrics"),
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
        memory.defer_agent_imports()
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


def where(path):
    """A path as results record it: relative to the checkout when inside it
    (a result file must not name this machine's directories)."""
    rel = os.path.relpath(path, REPO)
    return path if rel.startswith("..") else rel


def python_allocations(python=sys.executable):
    """MB Python allocated starting and importing the agent (no libvirt),
    and of it the modules' code (tracemalloc from the interpreter's start,
    in a fresh one)."""
    return json.loads(subprocess.run([python, "-X", "tracemalloc", "-c",
                                      ALLOCATED],
                                     capture_output=True, text=True,
                                     check=True).stdout)


def import_steps(python=sys.executable):
    """[(step, VmRSS MB after it, MB it added)] in a fresh interpreter."""
    got = json.loads(subprocess.run([python, "-c", PROBE, json.dumps(STEPS)],
                                    capture_output=True, text=True, check=True).stdout)
    return [{"step": label, "rss_mb": rss,
             "added_mb": round(rss - (got[i - 1][1] if i else 0), 1)}
            for i, (label, rss) in enumerate(got)]


def floor_rss(python=sys.executable):
    proc = subprocess.Popen([python, "-c", "import time; time.sleep(30)"])
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
    p.add_argument("--debian-venv", default=os.path.join(REPO, ".venv-debian"),
                   help="a virtualenv of Debian's /usr/bin/python3 with this package "
                        "(tools/run-tests.sh makes .venv-debian): the agent is "
                        "measured again under the interpreter nodes run")
    p.add_argument("--name", default="footprint",
                   help="results file name under bench/results (without .json)")
    args = p.parse_args()
    load_start = os.getloadavg()
    debian_python = os.path.join(args.debian_venv, "bin", "python")
    has_debian = os.access(debian_python, os.X_OK)
    pythons = {"venv": sys.executable}
    if has_debian:
        pythons["debian_python"] = debian_python
    floors = {k: floor_rss(py) for k, py in pythons.items()}
    steps = {k: import_steps(py) for k, py in pythons.items()}
    agent, status = (None, None) if args.no_edge else running_agent(
        args.debian_venv if has_debian else None)
    measured = {k: v for k, v in (agent or {}).items() if "error" not in v}
    summary = {
        "benchmark": "footprint",
        "node_agent": agent,
        "interpreters": {k: {"python": python_version(py), "executable": where(py)}
                         for k, py in pythons.items()},
        "import_steps": steps,
        "imports_rss_mb": {k: v[-1]["rss_mb"] for k, v in steps.items()},
        "python_allocations_at_import": python_allocations(),
        "floor_bare_interpreter": floors,
        "ratio_peak_vs_floor": {k: round(v["peak_rss_mb"] / floors[k]["rss_mb"], 2)
                                for k, v in measured.items()},
        "target_rss_mb": 30,
        "target_met": {k: v["peak_rss_mb"] <= 30 for k, v in measured.items()},
        "target_met_no_instance": {k: v["peak_rss_mb_no_instance"] <= 30
                                   for k, v in measured.items()},
        "latency_shaping": common.shaping_note(status) if status else None,
        "machine": common.machine(),
        "loadavg_at_start": [round(x, 2) for x in load_start],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "shared": "other jobs may share the cores: see the load averages",
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    def plot(ax):
        height = 0.8 / len(steps)
        for i, (k, st) in enumerate(steps.items()):
            ax.barh([j + i * height for j in range(len(st))],
                    [x["added_mb"] for x in st], height=height,
                    label="%s (Python %s): %.1f MB, running peak %s MB" % (
                        k, summary["interpreters"][k]["python"], st[-1]["rss_mb"],
                        measured[k]["peak_rss_mb"] if k in measured else "-"))
        first = next(iter(steps.values()))
        ax.set_yticks(range(len(first)), [x["step"] for x in first])
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.5)
        ax.legend(loc="lower right", fontsize="small")
        ax.set_xlabel("MB resident added by the step (fresh interpreter)")
        ax.set_title("Node agent memory (target 30 MB)")
    common.write(args.name, summary, plot)


def python_version(python):
    return subprocess.run([python, "-c", "import platform; "
                           "print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def running_agent(debian_venv):
    """ap-1's node agent on a private embedded edge, idle, with an
    instance, after a scrape; and where its resident memory lies.  Then
    the same agent started again from ``debian_venv`` (Debian's own
    /usr/bin/python3, the interpreter deployed nodes and images run: no
    shared libpython), measured the same way."""
    with common.BenchEdge("mcf-", 9695) as b:
        edge = b.edge
        time.sleep(3)  # a few heartbeats
        out = {"venv": dict(measure_agent(b), python=common.machine()["python"],
                            interpreter=where(sys.executable))}
        status = edge.status()
        tool = os.path.join(debian_venv or "", "bin", "mec-conpaas-node-agent")
        if not os.access(tool, os.X_OK):
            out["debian_python"] = {"error": "no %s: make it with /usr/bin/python3 -m "
                                             "venv .venv-debian && .venv-debian/bin/pip "
                                             "install -e ." % tool}
            return out, status
        edge.kill("agent-ap-1")
        _wait(lambda: not edge._pid("agent-ap-1"), 20, "ap-1's agent stopped")
        own_tool = edge._tool
        edge._tool = lambda name: tool if name == "mec-conpaas-node-agent" \
            else own_tool(name)
        try:
            edge.start_node_agent("ap-1")
        finally:
            edge._tool = own_tool
        pid = edge._pid("agent-ap-1")
        _wait(lambda: _answers(edge), 60, "ap-1's agent answering again")
        time.sleep(3)  # registered, a few heartbeats
        version = python_version(os.path.join(debian_venv, "bin", "python"))
        out["debian_python"] = dict(measure_agent(b), python=version,
                                    interpreter=where(os.path.realpath("/proc/%d/exe" % pid)))
    return out, status


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for " + what)
        time.sleep(0.5)
    return True


def _agent_token(edge):
    return open(edge.path("nodes", "ap-1", "node-agent.token")).read().strip()


def _metrics(edge):
    resp = requests.get("http://%s:%d/metrics" % (edge.net.bridge_address("ap-1"),
                                                  AGENT_PORT),
                        headers={"Authorization": "Bearer " + _agent_token(edge)},
                        timeout=10)
    resp.raise_for_status()


def _answers(edge):
    try:
        _metrics(edge)
        return True
    except (requests.RequestException, OSError):
        return False


def measure_agent(b):
    c, edge = b.client, b.edge
    pid = edge._pid("agent-ap-1")
    idle = common.proc_memory(pid)

    def scrape():
        _metrics(edge)
        return common.proc_memory(pid)
    # A node hosting no instance (an AP that only proxies, or an idle
    # one): scraped, and asked for its instances (the manager's sweep).
    scraped_empty = scrape()
    idle_mappings = by_mapping(pid)
    c.wait(c.create_service("web", "fp", node="ap-1")["operation"]["id"])
    time.sleep(3)
    with_instance = common.proc_memory(pid)
    scraped = scrape()
    mappings = by_mapping(pid)
    c.wait(c.delete_service("fp")["operation"]["id"])
    time.sleep(3)  # a heartbeat or more: the agent returns freed pages
    after_delete = common.proc_memory(pid)
    without = (idle, scraped_empty)
    return {"idle": idle, "after_metrics_scrape_no_instance": scraped_empty,
            "with_instance": with_instance, "after_metrics_scrape": scraped,
            "after_delete": after_delete,
            "peak_rss_mb_no_instance": max(m["peak_rss_mb"] for m in without),
            "peak_rss_mb": max(m["peak_rss_mb"] for m in without + (
                with_instance, scraped, after_delete)),
            "rss_by_mapping_mb_no_instance": idle_mappings,
            "rss_by_mapping_mb": mappings,
            "libvirt_binding_loaded": any(k.startswith("libvirt.so")
                                          or k.startswith("libvirtmod")
                                          for k in mappings)}


if __name__ == "__main__":
    main()
