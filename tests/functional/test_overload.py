"""50 Wi-Fi users on one access point saturate its local instance: HAProxy
queues what the instance cannot take and spills the rest to the service's
instance on another access point, with no failed request; an unsaturated
endpoint keeps every request on the local instance.  ``service show``
tells each instance's tier per access point."""
import collections
import json
import os
import subprocess
import time

import yaml

from mec_conpaas.edge import loadgen
from tests.functional.conftest import Load
from tests.functional.conftest import wait_op

USERS = 50


def served_by(results, nodes):
    return collections.Counter(nodes[r["instance"]] for r in results if r["ok"])


def test_overload_queues_and_spills_without_errors(tmp_path, edge, admin):
    # Each request computes for 10 ms in an instance of half a core: 50
    # users saturate one (the proxy's instance_maxconn keeps it healthy).
    bundle = loadgen.slow_web_bundle(str(tmp_path / "slow.tar.gz"), USERS, 0.01,
                                     cpu=True)
    wait_op(admin, admin.create_service("web", "burst", node="ap-1", bundle=bundle))
    wait_op(admin, admin.scale("burst", 2, node="ap-2"))
    svc = admin.service("burst")
    ids = {i["node"]: i["id"] for i in svc["instances"]}
    nodes = {i["address"]: i["node"] for i in svc["instances"]}
    # Seen from home (ap-1): its own instance is local, ap-2's takes the
    # overflow.  ap-3 is nearer to ap-2 (topology is a line).
    assert {i["node"]: i["tier"] for i in svc["instances"]} == {
        "ap-1": "local", "ap-2": "spill"}
    assert svc["tiers"] == {
        "ap-1": {ids["ap-1"]: "local", ids["ap-2"]: "spill"},
        "ap-2": {ids["ap-1"]: "spill", ids["ap-2"]: "local"},
        "ap-3": {ids["ap-1"]: "spill", ids["ap-2"]: "local"}}
    env = dict(os.environ, MEC_CONPAAS_URL=edge.manager_url(),
               MEC_CONPAAS_TOKEN=admin.token)
    shown = subprocess.run([edge._tool("mec-conpaas"), "service", "show", "burst",
                            "-f", "yaml"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    shown = yaml.safe_load(shown.stdout)
    assert shown["tiers"] == svc["tiers"]
    assert "@ap-2(active, worker, spill)" in shown["instances"]

    # One user does not saturate anything: nearest instance only.  The client
    # is an open loop: at one request every 20 ms an instance of half a core
    # computing 10 ms per request would be busy all the time and queue (then
    # spill), so the light user asks five times a second.
    light = Load(edge, "ap-1", svc["port"], interval=0.2)
    time.sleep(2)
    light = light.stop()
    assert loadgen.summarize(light)["failed"] == 0
    assert set(served_by(light, nodes)) == {"ap-1"}

    heavy = Load(edge, "ap-1", svc["port"], interval=0, clients=USERS)
    time.sleep(6)
    heavy = heavy.stop()
    summary = loadgen.summarize(heavy)
    print("overload:", json.dumps(dict(summary, served_by=served_by(heavy, nodes))))
    assert summary["failed"] == 0, summary
    # The local instance took all it could, the spill tier the rest.
    assert set(served_by(heavy, nodes)) == {"ap-1", "ap-2"}
    wait_op(admin, admin.delete_service("burst"))
