"""The node agent's Prometheus metrics (GET /metrics, the agent's token).

Per service, what this access point's HAProxy sees: its own counters, read
through the runtime API's ``show stat`` at scrape time (HAProxy's built-in
exporter would need another listening port per access point, and its own
protection).  Frontends count the service's requests at this access point;
the ``near`` and ``far`` backends are its two tiers of instances (see
haproxy.py).  Plus the node's capacity and use, and how long ago its last
heartbeat reached the manager.  And the process's own ``process_*``
metrics, as prometheus_client's ProcessCollector exports them.

The text is written here, in Prometheus's text format as
prometheus_client's ``generate_latest`` writes it (tests/unit/test_metrics
compares the two), not with prometheus_client: its import loads ssl,
urllib.request and with them OpenSSL's libcrypto, 5 MB resident in an agent
whose budget is 30 MB (issue 13; bench/footprint.py), and a node is scraped
for as long as it runs.
"""
import logging
import math
import os
import time

from mec_conpaas.agents.node import haproxy as haproxy_mod
from mec_conpaas.agents.node import httpserver

LOG = logging.getLogger(__name__)
PREFIX = "mec_conpaas_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SERVICE = ["service", "service_id"]
BACKEND = SERVICE + ["tier"]


class MetricFamily:
    """What prometheus_client's metric families hold: a name, its help,
    its type and samples (name, labels, value)."""

    type = "untyped"
    suffix = ""

    def __init__(self, name, documentation, value=None, labels=None):
        self.name, self.documentation = name, documentation
        self._labelnames = tuple(labels or ())
        self.samples = []
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels, value):
        self.samples.append((self.name + self.suffix,
                             dict(zip(self._labelnames, labels)), value))


class GaugeMetricFamily(MetricFamily):
    type = "gauge"


class CounterMetricFamily(MetricFamily):
    type = "counter"
    suffix = "_total"

    def __init__(self, name, documentation, value=None, labels=None):
        # As prometheus_client: the family is named without _total.
        super().__init__(name[:-6] if name.endswith("_total") else name,
                         documentation, value, labels)


def _go_float(d):
    """A sample's value as prometheus_client writes it (floatToGoString)."""
    d = float(d)
    if math.isinf(d):
        return "+Inf" if d > 0 else "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = ("%s.%s%s" % (s[0], s[1:dot], s[dot + 1:])).rstrip("0.")
        return "%se+%02d" % (mantissa, dot - 1)
    return s


def _escape(s):
    return s.replace("\\", r"\\").replace("\n", r"\n")


def text(families):
    """Prometheus's text format of ``families`` (generate_latest's)."""
    out = []
    for fam in families:
        name = fam.name + fam.suffix
        out.append("# HELP %s %s\n" % (name, _escape(fam.documentation)))
        out.append("# TYPE %s %s\n" % (name, fam.type))
        for sname, labels, value in fam.samples:
            labelstr = ",".join('%s="%s"' % (k, _escape(v).replace('"', r'\"'))
                                for k, v in sorted(labels.items()))
            out.append("%s%s %s\n" % (sname, "{%s}" % labelstr if labelstr else "",
                                       _go_float(value)))
    return "".join(out).encode("utf-8")


# Per service, from ``show stat``: name -> (family, labels, help).
PROXY = {
    "proxy_requests": (CounterMetricFamily, SERVICE, "Requests (HTTP "
                       "services) or connections (TCP services) this access "
                       "point's proxy took for the service."),
    "proxy_responses": (CounterMetricFamily, SERVICE + ["code"], "HTTP "
                        "responses by class, as the service's clients at this "
                        "access point got them."),
    "proxy_request_rate": (GaugeMetricFamily, SERVICE, "Requests (or "
                           "connections) per second over the last second."),
    "proxy_response_seconds": (GaugeMetricFamily, BACKEND, "Average time to "
                               "the first response byte over the tier's last "
                               "1024 requests (HAProxy rtime)."),
    "proxy_total_seconds": (GaugeMetricFamily, BACKEND, "Average total time "
                            "of the tier's last 1024 requests, queueing included "
                            "(HAProxy ttime)."),
    "proxy_queued_requests": (GaugeMetricFamily, BACKEND, "Requests waiting "
                              "for a free instance slot in the tier."),
    "proxy_servers_up": (GaugeMetricFamily, BACKEND, "Instances of the tier "
                         "the proxy sees healthy."),
}


def _number(row, field):
    try:
        return float(row.get(field) or "")
    except ValueError:
        return None


# Kept here for its users; in haproxy.py so a heartbeat needs no metrics module.
proxy_stats = haproxy_mod.proxy_stats


class AgentCollector:

    def __init__(self, agent):
        self.agent = agent

    def collect(self):
        agent = self.agent
        yield from self._node(agent)
        yield from self._proxy(agent.haproxy)

    @staticmethod
    def _node(agent):
        def gauge(name, doc, value):
            g = GaugeMetricFamily(PREFIX + name, doc)
            g.add_metric([], value)
            return g

        last = agent.last_heartbeat
        yield gauge("node_heartbeat_age_seconds", "Seconds since this node's "
                    "last heartbeat was accepted by the manager (+Inf: none yet).",
                    time.monotonic() - last if last is not None else float("inf"))
        if agent.containers is not None:
            yield gauge("node_instance_slots", "Instances this node may run "
                        "([node_agent] max_instances).",
                        agent.conf.node_agent.max_instances)
            yield gauge("node_instances", "Instance containers on this node.",
                        len(agent.containers.list()))
        memory = agent.reporter.memory()
        yield gauge("node_memory_total_bytes", "Memory of this node.",
                    memory["total_bytes"])
        yield gauge("node_memory_available_bytes", "Memory available on this "
                    "node.", memory["available_bytes"])
        disk = agent.reporter.disk()
        yield gauge("node_disk_total_bytes", "Size of the state filesystem.",
                    disk["total_bytes"])
        yield gauge("node_disk_free_bytes", "Free space of the state "
                    "filesystem.", disk["free_bytes"])
        yield gauge("node_load1", "1-minute load average.", os.getloadavg()[0])

    @staticmethod
    def _proxy(haproxy):
        rows = proxy_stats(haproxy)
        up = GaugeMetricFamily(PREFIX + "proxy_up", "1 while this access "
                                    "point's HAProxy answers its runtime API.")
        up.add_metric([], 0 if rows is None else 1)
        yield up
        if not rows:
            return
        names = {}
        for sid, svc in haproxy.services.items():
            names[haproxy_mod._key(sid)] = (svc.get("name") or "", sid)
        fam = {name: cls(PREFIX + name, doc, labels=labels)
               for name, (cls, labels, doc) in PROXY.items()}
        counted = {}
        for row in rows:
            px, sv = row.get("pxname", ""), row.get("svname", "")
            kind, _, key = px.partition("_")
            if key not in names:
                continue
            labels = list(names[key])
            if kind == "fe" and sv == "FRONTEND":
                total = _number(row, "req_tot")
                fam["proxy_requests"].add_metric(labels, total if total is not None
                                    else _number(row, "stot") or 0)
                req_rate = _number(row, "req_rate")
                fam["proxy_request_rate"].add_metric(labels, req_rate if req_rate is not None
                                else _number(row, "rate") or 0)
                for code in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"):
                    n = _number(row, "hrsp_" + code)
                    if n is not None:
                        fam["proxy_responses"].add_metric(labels + [code], n)
            elif kind in ("be", "bf"):
                if sv == "BACKEND":
                    tier = labels + ["near" if kind == "be" else "far"]
                    for name, field in (("proxy_response_seconds", "rtime"),
                                        ("proxy_total_seconds", "ttime")):
                        fam[name].add_metric(tier, (_number(row, field) or 0) / 1000)
                    fam["proxy_queued_requests"].add_metric(tier, _number(row, "qcur") or 0)
                elif row.get("status", "").startswith("UP"):
                    # Far servers in a backup-tier backend count as far.
                    tier = "far" if kind == "bf" or row.get("bck") == "1" else "near"
                    counted[(*labels, tier)] = counted.get((*labels, tier), 0) + 1
        for labels, n in sorted(counted.items()):
            fam["proxy_servers_up"].add_metric(list(labels), n)
        yield from fam.values()


class ProcessCollector:
    """prometheus_client's ProcessCollector: the agent's CPU time, memory,
    start time and file descriptors, from /proc."""

    def __init__(self, proc="/proc"):
        self._proc = proc
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._pagesize = os.sysconf("SC_PAGE_SIZE")
        try:
            with open(os.path.join(proc, "stat"), "rb") as f:
                self._btime = next(float(line.split()[1]) for line in f
                                   if line.startswith(b"btime "))
        except (OSError, StopIteration):
            self._btime = 0

    def collect(self):
        if not self._btime:
            return []
        pid = os.path.join(self._proc, "self")
        result = []
        try:
            with open(os.path.join(pid, "stat"), "rb") as f:
                parts = f.read().split(b")")[-1].split()
            result += [
                GaugeMetricFamily("process_virtual_memory_bytes",
                                  "Virtual memory size in bytes.", value=float(parts[20])),
                GaugeMetricFamily("process_resident_memory_bytes",
                                  "Resident memory size in bytes.",
                                  value=float(parts[21]) * self._pagesize),
                GaugeMetricFamily("process_start_time_seconds",
                                  "Start time of the process since unix epoch in seconds.",
                                  value=float(parts[19]) / self._ticks + self._btime),
                CounterMetricFamily("process_cpu_seconds_total",
                                    "Total user and system CPU time spent in seconds.",
                                    value=(float(parts[11]) + float(parts[12])) / self._ticks)]
        except OSError:
            pass
        try:
            with open(os.path.join(pid, "limits"), "rb") as f:
                max_fds = next(float(line.split()[3]) for line in f
                               if line.startswith(b"Max open file"))
            result += [
                GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                  len(os.listdir(os.path.join(pid, "fd")))),
                GaugeMetricFamily("process_max_fds", "Maximum number of open file "
                                  "descriptors.", value=max_fds)]
        except (OSError, StopIteration):
            pass
        return result


class Registry:
    """The agent's collectors, collected in order at each scrape."""

    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for c in self.collectors:
            yield from c.collect()


def registry(agent):
    return Registry(AgentCollector(agent), ProcessCollector())


def exposition(reg):
    return httpserver.Response(text(reg.collect()), content_type=CONTENT_TYPE)
