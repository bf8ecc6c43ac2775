"""A switch-first migration that fails after the switch goes back to the
source: every access point was already routed to the paused target when its
restore.sh refused the final delta; the manager routes them back, thaws the
source and removes the target, and the user, a request every 10 ms
throughout, loses none and sees its count go on from the source's."""
import io
import tarfile

from mec_conpaas.edge import loadgen
from tests.functional.conftest import Load
from tests.functional.conftest import all_containers
from tests.functional.conftest import assert_no_failed_requests
from tests.functional.conftest import client_get
from tests.functional.conftest import wait_op

COUNTER = '''\
import fcntl
import json
import os

DIR = os.environ.get("MEC_STATE_DIR", "/var/lib/service")


def application(environ, start_response):
    if environ.get("HTTP_X_MEC_HEALTH") or environ["PATH_INFO"] == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    if environ["PATH_INFO"] == "/refuse-restore":
        open(os.path.join(DIR, "refuse-restore"), "w").close()
    with open(os.path.join(DIR, "hits.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(os.path.join(DIR, "hits")) as f:
                hits = int(f.read() or 0)
        except (OSError, ValueError):
            hits = 0
        hits += 1
        with open(os.path.join(DIR, "hits.tmp"), "w") as f:
            f.write(str(hits))
        os.replace(os.path.join(DIR, "hits.tmp"), os.path.join(DIR, "hits"))
    body = json.dumps({"hits": hits, "instance": os.environ.get("MY_IP")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''
# It takes up a delta while running, unless told (by a file in its state,
# which the copy brings along) to refuse it.
RESTORE = "#!/bin/sh\n[ -e /var/lib/service/refuse-restore ] && exit 3\nexit 0\n"


def bundle(path):
    with tarfile.open(path, "w:gz") as tar:
        for name, text, mode in (("wsgi.py", COUNTER, 0o644),
                                 ("restore.sh", RESTORE, 0o755)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_failed_final_delta_routes_back_to_the_source(tmp_path, edge, admin):
    wait_op(admin, admin.create_service(
        "web", "refuser", node="ap-1", bundle=bundle(str(tmp_path / "refuser.tar.gz"))))
    svc = admin.service("refuser")
    (old,) = svc["instances"]
    assert client_get(edge, "ap-1", svc["port"], "/refuse-restore")["status"] == 200
    before = all_containers(edge)["ap-2"]
    load = Load(edge, "ap-1", svc["port"], interval=0.01)
    try:
        op = admin.wait(admin.migrate("refuser", "ap-2", "switch-first")["operation"]["id"])
        after = admin.service("refuser")
    finally:
        results = load.stop()
    summary = loadgen.summarize(results)
    print("refused delta: %s; %s" % (op.get("error"), summary))
    assert op["state"] != "SUCCEEDED" and "restore.sh exited 3" in op["error"], op
    assert (after["state"], after["home_node"]) == ("RUNNING", "ap-1"), after
    assert [(i["id"], i["node"], i["state"]) for i in after["instances"]] == [
        (old["id"], "ap-1", "ACTIVE")], after
    assert_no_failed_requests(summary)
    # Counted once each, by the source only: the target answered none.
    hits = sorted(r["hits"] for r in results)
    assert hits == list(range(hits[0], hits[0] + len(hits))), hits
    assert {r["instance"] for r in results} == {old["address"]}, summary
    assert all_containers(edge)["ap-2"] == before, (before, all_containers(edge))
    wait_op(admin, admin.delete_service("refuser"))
