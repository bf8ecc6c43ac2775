"""The manager's Prometheus metrics.

Operation outcomes are counted as operations end (one call from the
engine), so rates and histograms follow what this process did; what is
*state* (nodes, heartbeats, services) is read from the store at scrape
time instead, so it is right after a restart and never drifts from what
the API answers.
"""
import prometheus_client
from prometheus_client import core
from sqlalchemy import func
from sqlalchemy import select

from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope

PREFIX = "mec_conpaas_"

OPERATIONS = prometheus_client.Counter(
    PREFIX + "operations", "Operations ended, by kind and result "
    "(succeeded or failed).", ["kind", "result"], registry=None)
OPERATION_SECONDS = prometheus_client.Histogram(
    PREFIX + "operation_duration_seconds", "Time from an operation's request "
    "to its end, by kind and result.", ["kind", "result"], registry=None,
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
# The window in which a migrating service's requests wait: from freezing
# the source to the proxies switching (workflows' ``freeze_to_switch``).
FREEZE_TO_SWITCH = prometheus_client.Histogram(
    PREFIX + "migration_freeze_to_switch_seconds", "Migration's critical "
    "window, from freezing the source instance to the access points' proxies "
    "switching, by the operation kind that moved the instance (migrate, drain, "
    "...).", ["kind"], registry=None,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10))


def operation_ended(op):
    """Called in the transaction that ends ``op`` (SUCCEEDED or FAILED)."""
    result = op.state.lower()
    OPERATIONS.labels(op.kind, result).inc()
    if op.created_at is not None:
        OPERATION_SECONDS.labels(op.kind, result).observe(
            max(0.0, (models.utcnow() - op.created_at).total_seconds()))
    for window in (op.journal or {}).get("windows") or []:
        ms = window.get("freeze_to_switch") if isinstance(window, dict) else None
        if isinstance(ms, (int, float)):
            FREEZE_TO_SWITCH.labels(op.kind).observe(ms / 1000.0)


# Gauges read from the store at scrape time: name -> (labels, help).
GAUGES = {
    "node_up": (["node"], "1 while the node heartbeats within [manager] "
                "node_heartbeat_timeout."),
    "node_schedulable": (["node"], "1 unless the node is disabled (drained)."),
    "node_instance_slots": (["node"], "Instances the node may run (its "
                            "max_instances)."),
    "node_instances": (["node"], "Instances placed on the node."),
    "node_heartbeat_age_seconds": (["node"], "Seconds since the node's last "
                                   "heartbeat reached the manager."),
    "node_memory_total_bytes": (["node"], "Node memory, as its last report says."),
    "node_memory_available_bytes": (["node"], "Node memory available, as its "
                                    "last report says."),
    "node_cpu_percent": (["node"], "Node CPU use over its last heartbeat "
                         "interval."),
    "services": (["state"], "Services by state."),
    "operations_in_progress": (["kind"], "Operations pending or running, by kind."),
}


class StateCollector:
    """Nodes, heartbeats and services as the store has them now."""

    def __init__(self, cluster):
        self.cluster = cluster

    def collect(self):
        g = {name: core.GaugeMetricFamily(PREFIX + name, doc, labels=labels)
             for name, (labels, doc) in GAUGES.items()}
        now = models.utcnow()
        with session_scope() as s:
            cap = self.cluster.capacity(s)
            for n in self.cluster.nodes(s):
                c, key = cap[n.name], [n.name]
                g["node_up"].add_metric(key, 1 if c["up"] else 0)
                g["node_schedulable"].add_metric(key, 1 if c["schedulable"] else 0)
                g["node_instance_slots"].add_metric(key, c["max_instances"])
                g["node_instances"].add_metric(key, c["used"])
                g["node_heartbeat_age_seconds"].add_metric(key, max(
                    0.0, (now - n.last_heartbeat).total_seconds()))
                report = n.report or {}
                memory = report.get("memory") or {}
                if "total_bytes" in memory:
                    g["node_memory_total_bytes"].add_metric(key, memory["total_bytes"])
                    g["node_memory_available_bytes"].add_metric(
                        key, memory.get("available_bytes", 0))
                if isinstance(report.get("cpu_percent"), (int, float)):
                    g["node_cpu_percent"].add_metric(key, report["cpu_percent"])
            for state, count in s.execute(select(
                    models.Service.state, func.count()).group_by(models.Service.state)):
                g["services"].add_metric([state], count)
            for kind, count in s.execute(select(
                    models.Operation.kind, func.count()).where(
                    models.Operation.state.in_(("PENDING", "RUNNING")))
                    .group_by(models.Operation.kind)):
                g["operations_in_progress"].add_metric([kind], count)
        return list(g.values())


def registry(cluster):
    """One registry per API app: the operation metrics are the process's,
    the state collector reads this manager's store."""
    reg = prometheus_client.CollectorRegistry()
    for metric in (OPERATIONS, OPERATION_SECONDS, FREEZE_TO_SWITCH):
        reg.register(metric)
    reg.register(StateCollector(cluster))
    prometheus_client.ProcessCollector(registry=reg)
    return reg
