"""Offload because the objective allows it, and return when users come
close (issue 15; policies/farcloud.py ``offloads`` and ``returns``): the
scenario of bench/offload.py (its docstring), on an edge of its own (prefix
``mco-``), judged here: nothing moves while the needy service has no user;
once its user is at ap-3, the tolerant one goes to the cloud for it and it
comes to ap-3, each move a migration with its policy's reason, under the
user's open-loop requests every 10 ms with none failed, and the user's
latency drops.
"""
import statistics

import pytest

from bench import offload
from mec_conpaas.edge import loadgen
from tests.functional.conftest import assert_no_failed_requests
from tests.functional.conftest import private_edge

PREFIX = "mco-"


@pytest.fixture(scope="module")
def offload_edge(tmp_path_factory):
    path = offload.topology(str(tmp_path_factory.mktemp("offload")))
    with private_edge(PREFIX, 9693, path, **offload.EDGE_OPTS) as b:
        yield b


def _nodes(svc):
    return sorted(i["node"] for i in svc["instances"] if i["state"] == "ACTIVE")


def test_offload_for_the_objective_and_return_near_the_users(offload_edge):
    out = offload.scenario(offload_edge, interval=0.01)
    summary = loadgen.summarize(out["results"])
    t0 = out["marks"]["attached"]
    print("offload and return: %s; %s" % (
        {k: round(v - t0, 1) for k, v in out["marks"].items()}, summary))
    assert out["created_on"] == "cloud-1"  # the edge was full
    assert out["before_users"] == []  # no user: nothing needed the edge
    assert _nodes(out["need"]) == ["ap-3"] and _nodes(out["tol"]) == ["cloud-1"]
    [(state, src, dst, why)] = out["moves"]["tol"]
    assert (state, src, dst) == ("SUCCEEDED", "ap-3", "cloud-1"), why
    assert why.startswith("offload: objective 1000 ms met from cloud-1") and \
        "frees ap-3 for need (priority 50" in why, why
    [(state, src, dst, why)] = out["moves"]["need"]
    assert (state, src, dst) == ("SUCCEEDED", "cloud-1", "ap-3"), why
    assert why == "far cloud: back to ap-3, nearest its users (at ap-3)", why
    assert summary["requests"] > 500, summary
    assert_no_failed_requests(summary)
    # The user sees the return: the cloud is 30 + 2 + 2 ms away each way.
    cloud, edge = offload.phases(out)
    assert statistics.median(cloud) > statistics.median(edge) + 40, (
        statistics.median(cloud), statistics.median(edge))
