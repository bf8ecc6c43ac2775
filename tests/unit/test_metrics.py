"""The node agent writes /metrics itself (agents/node/metrics.py says why):
the same text prometheus_client's generate_latest writes for the same
families, and the same process_* metrics as its ProcessCollector."""
import prometheus_client
from prometheus_client import core
from prometheus_client.parser import text_string_to_metric_families

from mec_conpaas.agents.node import metrics

LABELS = ["service", "service_id", "code"]
CASES = [
    ("gauge", "mec_conpaas_node_load1", "1-minute load average.", None, 0.42),
    ("gauge", "mec_conpaas_node_heartbeat_age_seconds", 'Seconds "since"\nwith \\ in it.',
     None, float("inf")),
    ("gauge", "mec_conpaas_node_memory_total_bytes", "Memory.", None, 25169289216),
    ("gauge", "mec_conpaas_x", "Big and small.", None, 1234567.0),
    ("gauge", "mec_conpaas_y", "Negative, NaN.", None, float("nan")),
    ("gauge", "mec_conpaas_z", "Negative.", None, -3.5e-07),
    ("counter", "mec_conpaas_proxy_requests", "Requests.", LABELS,
     [(["web", "s-1", "2xx"], 12), (['we"b\\', "s\n2", "5xx"], 0),
      (["ünï", "s-3", "other"], 1e21)]),
    ("counter", "process_cpu_seconds_total", "CPU.", None, 1.25),
    ("gauge", "mec_conpaas_proxy_servers_up", "Up.", ["service", "service_id", "tier"],
     [(["web", "s-1", "near"], 2), (["web", "s-1", "far"], 1)]),
]


def families(ours):
    cls = {"gauge": (metrics.GaugeMetricFamily if ours else core.GaugeMetricFamily),
           "counter": (metrics.CounterMetricFamily if ours else core.CounterMetricFamily)}
    out = []
    for kind, name, doc, labels, value in CASES:
        if labels is None:
            out.append(cls[kind](name, doc, value=value))
        else:
            fam = cls[kind](name, doc, labels=labels)
            for lv, v in value:
                fam.add_metric(lv, v)
            out.append(fam)
    return out


class _Reg:
    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        return self.fams


def test_text_is_generate_latests():
    ours = metrics.text(families(True))
    theirs = prometheus_client.generate_latest(_Reg(families(False)))
    assert ours == theirs
    assert b"mec_conpaas_proxy_requests_total{code=\"2xx\"" in ours


def test_process_metrics_are_process_collectors():
    reg = prometheus_client.CollectorRegistry()
    prometheus_client.ProcessCollector(registry=reg)
    theirs = {f.name: f for f in text_string_to_metric_families(
        prometheus_client.generate_latest(reg).decode())}
    ours = {f.name: f for f in text_string_to_metric_families(
        metrics.text(metrics.ProcessCollector().collect()).decode())}
    assert set(ours) == set(theirs) and len(ours) == 6, (set(ours), set(theirs))
    for name, fam in ours.items():
        assert (fam.type, fam.documentation) == (theirs[name].type,
                                                 theirs[name].documentation)
        value, ref = fam.samples[0].value, theirs[name].samples[0].value
        if name in ("process_start_time_seconds", "process_max_fds"):
            assert value == ref
        else:  # this process moved on a little between the two reads
            assert 0 < value and abs(value - ref) <= max(0.5 * ref, 100)
