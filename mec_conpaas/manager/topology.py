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
    return topo
