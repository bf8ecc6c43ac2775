"""The per-service knobs the mobility policies read, in one place.

The QoS spec (priority, latency objective, max users, min and max
instances) belongs to the service (the ``enorm`` work adds it to the API and
the store).  Until it is there every field falls back to the ``[policies]``
defaults; this accessor is the one place to wire the spec in, so the
policies never read a service row themselves.
"""

FIELDS = ("priority", "latency_objective_ms", "max_users", "min_instances",
          "max_instances")


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
