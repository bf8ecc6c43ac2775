"""Pre-copy rounds under a steady write rate: the source keeps serving (and
writing) while the rounds copy what changed since the last one, and no
write is lost or applied twice when the final delta moves frozen."""
import time

from mec_conpaas.edge import loadgen
from tests.functional.conftest import Load
from tests.functional.conftest import state_file
from tests.functional.conftest import wait_op


def test_precopy_rounds_lose_no_write_under_a_steady_write_rate(tmp_path, edge, admin):
    bundle = loadgen.journal_bundle(str(tmp_path / "journal.tar.gz"))
    wait_op(admin, admin.create_service("web", "journal", node="ap-1", bundle=bundle))
    port = admin.service("journal")["port"]
    # Every request writes: its count, and a 1 kB journal line.
    load = Load(edge, "ap-1", port, interval=0.01)
    try:
        time.sleep(0.5)
        (window,) = wait_op(admin, admin.migrate("journal", "ap-2"))["windows"]
        time.sleep(0.3)
    finally:
        results = load.stop()
    summary = loadgen.summarize(results)
    print("precopy: rounds %s, final %s files %s bytes, freeze to switch %s ms; %s" % (
        window["precopy_rounds"], window["final_files"], window["final_bytes"],
        window["freeze_to_switch"], summary))
    assert summary["failed"] == 0, summary
    # The user wrote while the rounds ran: each round found the source's
    # new writes, as a delta against the previous round's manifest.
    rounds = window["precopy_rounds"]
    assert rounds and all(r["round"] == "delta" and r["files"] for r in rounds), rounds
    # Every request counted once, in order (the open loop overlaps them).
    hits = sorted(r["hits"] for r in results)
    assert hits == list(range(1, len(results) + 1)), hits
    # And its journal line is on the new instance: none lost, none twice.
    (inst,) = [i for i in admin.service("journal")["instances"] if i["state"] == "ACTIVE"]
    assert inst["node"] == "ap-2"
    journal = state_file(edge, "ap-2", inst["id"], "journal").splitlines()
    assert [int(line.split()[0]) for line in journal] == hits
    wait_op(admin, admin.delete_service("journal"))
