"""A service's QoS spec, after PiCasso's service spec and ENORM's request.

``priority`` (0-100, higher is admitted first and evicted last),
``latency_objective_ms`` (what its users should see; None: none),
``max_users`` (None: no limit), ``min_instances`` and ``max_instances``
(None: no limit).  :func:`of` is the one accessor every policy reads a
service's spec through, from a store row or a plain dict alike;
:func:`knobs` is what the mobility policies read: the spec's value where the
service sets one, else the deployment's ``[policies]`` default.
"""
import dataclasses

from mec_conpaas import exception

PRIORITY_MIN, PRIORITY_MAX = 0, 100
FIELDS = ("priority", "latency_objective_ms", "max_users", "min_instances",
          "max_instances")


@dataclasses.dataclass(frozen=True)
class QoS:
    priority: int = 50
    latency_objective_ms: float | None = None
    max_users: int | None = None
    min_instances: int = 1
    max_instances: int | None = None

    def as_dict(self):
        return dataclasses.asdict(self)


def of(svc, default_priority=50):
    """The QoS spec of ``svc`` (a ``models.Service`` or a dict with the
    same keys); a field not set takes its default."""
    get = svc.get if isinstance(svc, dict) else lambda k: getattr(svc, k, None)
    values = {k: get(k) for k in FIELDS}
    if values["priority"] is None:
        values["priority"] = default_priority
    if values["min_instances"] is None:
        values["min_instances"] = 1
    return QoS(**values)


def latency_objective_ms(svc):
    """The latency objective of ``svc`` in ms, or None: what follow-the-user
    and auto-scaling compare measured latency with."""
    return of(svc).latency_objective_ms


def _number(form, key, kind, low, high=None):
    raw = form.get(key)
    if raw in (None, ""):
        return None
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise exception.BadRequest(
            "%s must be %s %s%s, not %r" % (
                key, "an integer" if kind is int else "a number",
                ">= %s" % low if high is None else "from %s to" % low,
                "" if high is None else " %s" % high, raw))
    return value


def parse(form, count=None):
    """The spec's columns from a create request's form fields (absent ones
    None), checked together: BadRequest says which to fix."""
    spec = {"priority": _number(form, "priority", int, PRIORITY_MIN, PRIORITY_MAX),
            "latency_objective_ms": _number(form, "latency_objective_ms", float, 0.1),
            "max_users": _number(form, "max_users", int, 1),
            "min_instances": _number(form, "min_instances", int, 1),
            "max_instances": _number(form, "max_instances", int, 1)}
    low, high = spec["min_instances"] or 1, spec["max_instances"]
    if high is not None and low > high:
        raise exception.BadRequest("min_instances %d is above max_instances %d: "
                                   "lower --min or raise --max" % (low, high))
    if count is not None and (count < low or (high is not None and count > high)):
        raise exception.BadRequest(
            "count %d is outside the service's instances range %d-%s: choose a "
            "count in it or change --min/--max" % (count, low, high or "any"))
    return spec


def knobs(conf, service=None):
    """The QoS knobs of ``service`` (a ``models.Service`` or None): its spec's
    value where it sets one (an attribute ``qos`` dict, or an attribute of the
    field's own name), else ``[policies]``'s default; plus the hysteresis
    settings, which are the deployment's, not a tenant's."""
    spec = dict(getattr(service, "qos", None) or {})
    out = {}
    for field in FIELDS:
        value = spec.get(field, getattr(service, field, None))
        out[field] = getattr(conf.policies, field) if value is None else value
    out["min_dwell_s"] = conf.policies.min_dwell
    out["min_gain"] = conf.policies.min_gain
    out["handover_probability"] = conf.policies.handover_probability
    return out
