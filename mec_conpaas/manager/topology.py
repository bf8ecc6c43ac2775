"""The edge topology file: nodes and links with their latency."""
import os

import yaml

from mec_conpaas import exception

DEFAULT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "etc",
                       "edge-topology.yaml")


def load(path=None):
    path = path or DEFAULT
    try:
        with open(path) as f:
            topo = yaml.safe_load(f) or {}
    except OSError as e:
        raise exception.BadRequest("cannot read topology %s: %s" % (path, e))
    except yaml.YAMLError as e:
        raise exception.BadRequest("topology %s is not valid YAML: %s" % (path, e))
    return validate(topo, path)


def validate(topo, where="topology"):
    nodes = topo.get("nodes")
    if not isinstance(nodes, dict) or not nodes:
        raise exception.BadRequest("%s: 'nodes' must map node names to settings"
                                   % where)
    links = []
    for link in topo.get("links", []):
        if not (isinstance(link, dict) and {"a", "b", "latency_ms"} <= set(link)):
            raise exception.BadRequest(
                "%s: each link needs a, b and latency_ms: %r" % (where, link))
        for end in (link["a"], link["b"]):
            if end not in nodes and end != "master":
                raise exception.BadRequest("%s: link to unknown node %r"
                                           % (where, end))
        links.append((link["a"], link["b"], float(link["latency_ms"])))
    topo["links"] = links
    for spec in nodes.values():
        capacity(spec)  # checked at load, not when an access point starts
    return topo


# An emulated access point's capacity unless its topology entry says
# otherwise: a Raspberry Pi 3 (4 cores, 1 GB), less a reserve for its own
# work (hostapd, HAProxy, the node agent).  See README "Capacity and QoS"
# for what a core means on the machine that emulates the edge.
PI3_CAPACITY = {"cpus": 4.0, "memory_mb": 1024, "reserve_cpus": 0.5,
                "reserve_memory_mb": 128}


def capacity(spec):
    """A node's ``[capacity]`` options from its topology entry's
    ``capacity`` mapping (any of cpus, memory_mb, reserve_cpus,
    reserve_memory_mb), the rest a Raspberry Pi 3's; BadRequest names a
    wrong value."""
    given = (spec or {}).get("capacity") or {}
    if not isinstance(given, dict) or set(given) - set(PI3_CAPACITY):
        raise exception.BadRequest(
            "a node's capacity takes %s, not %r" % (", ".join(PI3_CAPACITY), given))
    out = dict(PI3_CAPACITY)
    for key, value in given.items():
        kind = int if key.endswith("_mb") else float
        try:
            out[key] = kind(value)
        except (TypeError, ValueError):
            raise exception.BadRequest("capacity %s must be a number, not %r"
                                       % (key, value)) from None
    if out["reserve_cpus"] > out["cpus"] or out["reserve_memory_mb"] > out["memory_mb"]:
        raise exception.BadRequest("a node's capacity reserve is larger than the "
                                   "capacity itself: %r" % out)
    return out
