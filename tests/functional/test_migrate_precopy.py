"""Pre-copy rounds under a steady write rate: the source keeps serving (and
writing) while the rounds copy what changed since the last one, and no
write is lost or applied twice when the final delta moves frozen."""
import pytest

from tests.functional.conftest import migrate_journal_under_load


def test_precopy_rounds_lose_no_write_under_a_steady_write_rate(tmp_path, edge, admin):
    # Every request writes: its count, and a 1 kB journal line; every one is
    # counted once, in order, and its line is on the new instance once.
    window, summary = migrate_journal_under_load(edge, admin, tmp_path, interval=0.01)
    print("precopy: rounds %s, final %s files %s bytes, freeze to switch %s ms; %s" % (
        window["precopy_rounds"], window["final_files"], window["final_bytes"],
        window["freeze_to_switch"], summary))
    # The user wrote while the rounds ran: each round found the source's
    # new writes, as a delta against the previous round's manifest.
    rounds = window["precopy_rounds"]
    assert rounds and all(r["round"] == "delta" and r["files"] for r in rounds), rounds
    # The frozen delta carried its manifest as the change since the round
    # the target pulled last (not an entry per file of the state).
    assert window["final_manifest_as"] == "change", window


@pytest.mark.parametrize("order", ["freeze-first", "switch-first"])
def test_requests_held_in_the_window_run_once_on_the_new_one(tmp_path, edge, admin,
                                                             order):
    """POSTs (not idempotent), one user opening a connection per request and
    one keeping its connections alive.  Freeze-first: those the proxy sent
    the source while it was frozen sat unread in its sockets; killed right
    after the switch, its resets are replayed on the new instance, where
    each runs once.  Switch-first: those sent after the switch wait at the
    paused target and run there once, after the final delta; the source,
    frozen only once it had answered its own, holds none."""
    window, summary = migrate_journal_under_load(
        edge, admin, tmp_path, interval=0.02, order=order, users=(
            {"method": "POST"}, {"method": "POST", "keepalive": True}))
    print("held (%s): window %s; %s" % (order, {
        k: v for k, v in window.items() if k != "precopy_rounds"}, summary))
    assert window["order"] == order, window
    assert window["quiescent"] is True, window
    assert summary["reused_connections"] > 0  # the keep-alive user kept some
    # The source was killed on its own, ahead of its delete.
    assert window["kill_on_node"] is not None and window["kill"] <= window["destroy"]
