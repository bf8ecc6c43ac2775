"""``mec-conpaas-edge up --with-prometheus``: Debian's prometheus scrapes the
manager and every node agent of the edge with their tokens."""
import os
import shutil
import signal
import time

import pytest
import requests

from mec_conpaas.edge import prometheus

PORT = 9692


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="Debian's prometheus is not installed (tools/install-deps.sh)")
def test_prometheus_scrapes_the_edge(edge):
    url = prometheus.start(edge, PORT, interval="1s")
    try:
        deadline = time.monotonic() + 30
        while True:
            targets = requests.get(url + "/api/v1/targets", timeout=5).json()
            health = {t["labels"]["job"]: t["health"]
                      for t in targets["data"]["activeTargets"]}
            if len(health) == 1 + len(edge.net.aps) and set(health.values()) == {"up"}:
                break
            assert time.monotonic() < deadline, targets
            time.sleep(0.5)
        got = requests.get(url + "/api/v1/query", timeout=5, params={
            "query": "mec_conpaas_node_up"}).json()["data"]["result"]
        assert sorted(r["metric"]["node"] for r in got) == sorted(edge.net.aps)
        got = requests.get(url + "/api/v1/query", timeout=5, params={
            "query": "mec_conpaas_proxy_up"}).json()["data"]["result"]
        assert sorted(r["metric"]["node"] for r in got) == sorted(edge.net.aps)
    finally:
        edge.kill(prometheus.NAME, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while edge._pid(prometheus.NAME) and time.monotonic() < deadline:
            time.sleep(0.1)
        edge.kill(prometheus.NAME, signal.SIGKILL)
        os.unlink(edge.path("pids", prometheus.NAME + ".pid"))
        shutil.rmtree(edge.path(prometheus.NAME), ignore_errors=True)
