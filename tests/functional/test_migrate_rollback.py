"""A switch-first migration that fails after the switch goes back to the
source: every access point was already routed to the paused target when its
restore.sh refused the final delta; the manager routes them back, thaws the
source and removes the target, and the user, a request every 10 ms
throughout, loses none and sees its count go on from the source's."""
from mec_conpaas.edge import loadgen
from tests.functional.conftest import Load
from tests.functional.conftest import all_containers
from tests.functional.conftest import assert_no_failed_requests
from tests.functional.conftest import wait_op

# Its app takes up no delta: every migration of it fails once the proxies
# were switched to the paused target.
REFUSE = "#!/bin/sh\necho refusing the delta >&2\nexit 3\n"


def test_a_failed_final_delta_routes_back_to_the_source(tmp_path, edge, admin):
    wait_op(admin, admin.create_service("web", "refuser", node="ap-1", bundle=(
        loadgen.journal_bundle(str(tmp_path / "refuser.tar.gz"), restore=REFUSE))))
    svc = admin.service("refuser")
    (old,) = svc["instances"]
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
