"""The node agent's Prometheus metrics (GET /metrics, the agent's token).

Per service, what this access point's HAProxy sees: its own counters, read
through the runtime API's ``show stat`` at scrape time (HAProxy's built-in
exporter would need another listening port per access point, and its own
protection).  Frontends count the service's requests at this access point;
the ``near`` and ``far`` backends are its two tiers of instances (see
haproxy.py).  Plus the node's capacity and use, and how long ago its last
heartbeat reached the manager.
"""
import logging
import os
import time

import prometheus_client
from prometheus_client import core

from mec_conpaas.agents.node import haproxy as haproxy_mod
from mec_conpaas.agents.node import httpserver

LOG = logging.getLogger(__name__)
PREFIX = "mec_conpaas_"
SERVICE = ["service", "service_id"]
BACKEND = SERVICE + ["tier"]
# Per service, from ``show stat``: name -> (family, labels, help).
PROXY = {
    "proxy_requests": (core.CounterMetricFamily, SERVICE, "Requests (HTTP "
                       "services) or connections (TCP services) this access "
                       "point's proxy took for the service."),
    "proxy_responses": (core.CounterMetricFamily, SERVICE + ["code"], "HTTP "
                        "responses by class, as the service's clients at this "
                        "access point got them."),
    "proxy_request_rate": (core.GaugeMetricFamily, SERVICE, "Requests (or "
                           "connections) per second over the last second."),
    "proxy_response_seconds": (core.GaugeMetricFamily, BACKEND, "Average time to "
                               "the first response byte over the tier's last "
                               "1024 requests (HAProxy rtime)."),
    "proxy_total_seconds": (core.GaugeMetricFamily, BACKEND, "Average total time "
                            "of the tier's last 1024 requests, queueing included "
                            "(HAProxy ttime)."),
    "proxy_queued_requests": (core.GaugeMetricFamily, BACKEND, "Requests waiting "
                              "for a free instance slot in the tier."),
    "proxy_servers_up": (core.GaugeMetricFamily, BACKEND, "Instances of the tier "
                         "the proxy sees healthy."),
}


def _number(row, field):
    try:
        return float(row.get(field) or "")
    except ValueError:
        return None


# Kept here for its users; in haproxy.py so a heartbeat needs no prometheus_client.
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
            g = core.GaugeMetricFamily(PREFIX + name, doc)
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
        up = core.GaugeMetricFamily(PREFIX + "proxy_up", "1 while this access "
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


def registry(agent):
    reg = prometheus_client.CollectorRegistry()
    reg.register(AgentCollector(agent))
    prometheus_client.ProcessCollector(registry=reg)
    return reg


def exposition(reg):
    return httpserver.Response(prometheus_client.generate_latest(reg),
                               content_type=prometheus_client.CONTENT_TYPE_LATEST)
