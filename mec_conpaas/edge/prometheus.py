"""Debian's ``prometheus`` scraping an embedded edge (``mec-conpaas-edge up
--with-prometheus``).

The configuration is written for this edge: the manager with the admin
token, every node agent with its own token (each agent's /metrics takes
only its token), all from files in the edge's state directory, so no
secret is on a command line.  Prometheus listens on loopback only; its
process is the edge's like any other, so ``down`` stops it.
"""
import os
import shutil

import requests
import yaml

from mec_conpaas.edge import cluster

NAME = "prometheus"
AGENT_PORT = 9681  # [node_agent] bind_port, as the edge runs its agents


def config(edge, interval="5s"):
    host = edge.manager_url().split("//", 1)[1]
    jobs = [{"job_name": "mec-conpaas-manager", "scrape_interval": interval,
             "authorization": {"type": "Bearer",
                               "credentials_file": edge.path("admin-token")},
             "static_configs": [{"targets": [host]}]}]
    for ap in edge.net.aps:
        jobs.append({
            "job_name": "mec-conpaas-node-" + ap, "scrape_interval": interval,
            "authorization": {"type": "Bearer", "credentials_file": edge.path(
                "nodes", ap, "node-agent.token")},
            "static_configs": [{"targets": ["%s:%d" % (edge.net.bridge_address(ap),
                                                       AGENT_PORT)],
                                "labels": {"node": ap}}]})
    return {"global": {"scrape_interval": interval}, "scrape_configs": jobs}


def start(edge, port=9090, interval="5s"):
    """Start Prometheus against ``edge``; its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise cluster.EdgeError("--with-prometheus needs Debian's prometheus "
                                "package: apt-get install prometheus")
    base = edge.path(NAME)
    os.makedirs(os.path.join(base, "data"), exist_ok=True)
    conf = os.path.join(base, "prometheus.yml")
    with open(conf, "w") as f:
        yaml.safe_dump(config(edge, interval), f, sort_keys=False)
    url = "http://127.0.0.1:%d" % port
    proc = edge._spawn(NAME, [binary, "--config.file=" + conf,
                              "--storage.tsdb.path=" + os.path.join(base, "data"),
                              "--web.listen-address=127.0.0.1:%d" % port])

    def ready():
        try:
            return requests.get(url + "/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False
    edge._wait("prometheus", ready, timeout=60, proc=proc, logname=NAME)
    return url

