"""Apps that read their state once, when they start: migration puts the
state in before the app starts and restarts it on the final delta;
service stop/start keeps the state; MY_ROLE and MASTER_IP as a generic
service sees them."""
import io
import json
import os
import subprocess
import tarfile
import time
import urllib.parse

import pytest

from mec_conpaas.cli import client as client_mod
from mec_conpaas.edge import loadgen
from mec_conpaas.manager import service as service_mod
from tests.functional.conftest import Load
from tests.functional.conftest import all_containers
from tests.functional.conftest import client_get
from tests.functional.conftest import state_file as read_state
from tests.functional.conftest import wait_op
from tests.functional.test_generic import tcp_echo

MEMCOUNTER = os.path.join(os.path.dirname(service_mod.SAMPLE), "memcounter")


def running_ids(edge):
    return sorted(i for ids in all_containers(edge).values() for i in ids)


def active(svc):
    return [i for i in svc["instances"] if i["state"] == "ACTIVE"]


def state_file(edge, inst, name):
    return read_state(edge, inst["node"], inst["id"], name)


def test_in_memory_counter_continues_across_ten_migrations(tmp_path, edge, admin):
    bundle = tmp_path / "memcounter.tar.gz"
    bundle.write_bytes(service_mod.build_sample_bundle(MEMCOUNTER))
    wait_op(admin, admin.create_service("web", "mem", node="ap-1", bundle=str(bundle)))
    port = admin.service("mem")["port"]
    load = Load(edge, "ap-1", port, interval=0.01, keepalive=True)
    windows = []
    try:
        time.sleep(0.3)
        for n in range(10):
            windows += wait_op(admin, admin.migrate("mem", ("ap-2", "ap-1")[n % 2]))[
                "windows"]
        time.sleep(0.3)
    finally:
        results = load.stop()
    summary = loadgen.summarize(results)
    # Each migration's timed steps, before any judgement: what to look at
    # when requests failed.
    print("memcounter windows: %s" % windows)
    assert summary["failed"] == 0, summary
    # A browser's connections: kept alive, and moved by HAProxy (it closes
    # the server side after each answer, so each request is routed afresh).
    assert summary["reused_connections"] > summary["requests"] // 2, summary
    # Requests overlap (an open loop): the order the app counted them in
    # is the order of their hits, not of their answers.
    results.sort(key=lambda r: r["hits"])
    hits = [r["hits"] for r in results]
    # Loaded at each start, counted in memory: every request counted once.
    assert hits == list(range(1, len(hits) + 1)), hits
    # The count reaching the last instance intact already shows the state
    # passed through all ten.  The client also sees the serving instance
    # change (with the old sequential client, a loaded machine once stalled
    # it past a short-lived instance's whole life: 8 of 10 seen in CI).
    served = [r["instance"] for r in results]
    changes = sum(a != b for a, b in zip(served, served[1:]))
    assert 5 <= changes <= 10, (changes, summary)
    assert [w["restore_mode"] for w in windows] == ["restart"] * 10
    print("memcounter: %d requests, %d instance changes seen, longest gap %s ms; "
          "freeze_to_switch ms %s; restart ms %s" % (
        len(hits), changes, summary.get("max_gap_ms"), [w["freeze_to_switch"] for w in windows],
        [w["restore_ms"] for w in windows]))
    svc = admin.service("mem")
    assert [(i["node"], i["role"]) for i in svc["instances"]] == [("ap-1", "master")]
    assert running_ids(edge) == [svc["instances"][0]["id"]]


def roles_hits(edge, port, times=4):
    """Each instance's count, through the access point it is nearest to
    (ap-1: the master, ap-3: the worker)."""
    seen = {}
    for ap in ("ap-1", "ap-3"):
        for _ in range(times):
            body = json.loads(client_get(edge, ap, port)["body"])
            seen.setdefault(body["role"], []).append(body["hits"])
    assert seen.keys() == {"master", "worker"}, seen
    return {role: hits[-1] for role, hits in seen.items()}


def test_stop_and_start_keep_every_instance_state(edge, admin):
    wait_op(admin, admin.scale("mem", 2, node="ap-3"))
    svc = admin.service("mem")
    port = svc["port"]
    assert sorted((i["node"], i["role"]) for i in svc["instances"]) == [
        ("ap-1", "master"), ("ap-3", "worker")]
    before = roles_hits(edge, port)
    with pytest.raises(client_mod.ApiError) as e:
        admin.start("mem")
    assert e.value.status == 409 and "only when STOPPED" in e.value.message
    env = dict(os.environ, MEC_CONPAAS_URL=edge.manager_url(),
               MEC_CONPAAS_TOKEN=admin.token)
    res = subprocess.run([edge._tool("mec-conpaas"), "service", "stop", "mem", "-f",
                          "json"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert (shown["state"], shown["port"], shown["instances"]) == ("STOPPED", port, "")
    assert running_ids(edge) == []
    # The endpoint stays, with nobody behind it.
    ap_addr, _ = edge.net.client_addresses("ap-1")
    out = subprocess.run(["ip", "netns", "exec", edge.net.client_netns("ap-1"),
                          "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          "http://%s:%d/" % (ap_addr, port)],
                         capture_output=True, text=True, timeout=30).stdout
    assert out == "503"
    wait_op(admin, admin.start("mem"))
    svc = admin.service("mem")
    assert svc["state"] == "RUNNING" and svc["port"] == port
    assert sorted((i["node"], i["role"]) for i in svc["instances"]) == [
        ("ap-1", "master"), ("ap-3", "worker")]
    assert running_ids(edge) == sorted(i["id"] for i in svc["instances"])
    after = roles_hits(edge, port)
    assert after == {role: hits + 4 for role, hits in before.items()}, (before, after)
    wait_op(admin, admin.delete_service("mem"))
    assert not os.path.exists(edge.path("master", "stopped", svc["id"]))


ENV_RUN = b"""#!/bin/sh
exec python3 - <<'PY'
import socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
S(("0.0.0.0", 8080), H).serve_forever()
PY
"""
ENV_INIT = b"#!/bin/sh\necho \"$MY_ROLE $MASTER_IP $MY_IP\" > /var/lib/service/env\n"
ENV_CLEANUP = b"#!/bin/sh\necho \"cleanup ran on $MY_IP\" >> /var/lib/service/cleanup\n"
ENV_NOTIFY = b"#!/bin/sh\necho \"$PEERS\" > /var/lib/service/peers.$MY_IP\n"


def env_bundle(path):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("run.sh", ENV_RUN), ("init.sh", ENV_INIT),
                           ("cleanup.sh", ENV_CLEANUP), ("notify.sh", ENV_NOTIFY)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return path


def test_roles_master_ip_and_cleanup(tmp_path, edge, admin):
    master_ip = urllib.parse.urlsplit(edge.manager_url()).hostname
    wait_op(admin, admin.create_service("generic", "roles", node="ap-2", count=2,
                                        bundle=env_bundle(str(tmp_path / "env.tar.gz"))))

    def envs():
        svc = admin.service("roles")
        return svc, {i["id"]: state_file(edge, i, "env").split() for i in svc["instances"]}

    svc, seen = envs()
    first, second = svc["instances"]
    assert seen[first["id"]] == ["master", master_ip, first["address"]]
    assert seen[second["id"]] == ["worker", master_ip, second["address"]]
    # The role moves with a migration; scale-in never takes the master.
    wait_op(admin, admin.migrate("roles", "ap-3"))
    svc, seen = envs()
    master = [i for i in svc["instances"] if i["role"] == "master"][0]
    for inst in svc["instances"]:  # PEERS lists the moved master first
        peers = state_file(edge, inst, "peers." + inst["address"]).split()
        assert peers[0] == master["address"] and len(peers) == 2
    wait_op(admin, admin.scale("roles", 1))
    svc, seen = envs()
    (only,) = svc["instances"]
    assert (only["node"], only["role"]) == ("ap-3", "master")
    assert seen[only["id"]] == ["master", master_ip, only["address"]]
    # Stop runs cleanup.sh; its trace is state, kept until start.
    wait_op(admin, admin.stop("roles"))
    wait_op(admin, admin.start("roles"))
    svc, seen = envs()
    (back,) = svc["instances"]
    assert (back["node"], back["role"]) == ("ap-3", "master")
    assert state_file(edge, back, "cleanup") == "cleanup ran on %s\n" % only["address"]
    assert tcp_echo(edge, "ap-1", svc["port"], "hi") == "hi"
    wait_op(admin, admin.delete_service("roles"))
