"""Mobility traces: the bundled example parses, bad rows are refused with
a message that says what to fix, replay keeps time."""
import time

import pytest

from mec_conpaas.edge import traces

APS = ["ap-1", "ap-2", "ap-3"]


def test_bundled_trace_walks_the_corridor():
    steps = traces.load(traces.DEFAULT, APS)
    alice = [s.ap for s in steps if s.user == "alice"]
    assert alice == ["ap-1", "ap-2", "ap-3", traces.DETACH]
    assert traces.locations(steps, 40) == {"alice": "ap-2", "bob": "ap-2"}
    assert traces.locations(steps, 100) == {"alice": None, "bob": None}


@pytest.mark.parametrize("text,needle", [
    ("0,alice\n", "expected 3 columns"),
    ("x,alice,ap-1\n", "is not a number"),
    ("5,alice,ap-1\n1,alice,ap-2\n", "goes back"),
    ("0,Alice,ap-1\n", "lowercase"),
    ("0,alice,ap-9\n", "unknown access point 'ap-9'"),
    ("# nothing\n", "has no steps"),
])
def test_bad_traces_say_what_to_fix(text, needle):
    with pytest.raises(traces.TraceError, match=needle):
        traces.parse(text.splitlines(True), APS)


def test_replay_applies_steps_at_their_time_divided_by_speed():
    steps = traces.parse(["time_s,user,ap\n", "0,a,ap-1\n", "0.2,a,ap-2\n",
                          "0.4,a,-\n"], APS)
    done = []
    t0 = time.monotonic()
    late = traces.replay(steps, lambda u, ap: done.append((u, ap, time.monotonic() - t0)),
                         lambda u: done.append((u, None, time.monotonic() - t0)),
                         speed=2.0)
    assert [(u, ap) for u, ap, _ in done] == [("a", "ap-1"), ("a", "ap-2"), ("a", None)]
    assert 0.09 <= done[1][2] < 0.3 and 0.19 <= done[2][2] < 0.5
    assert all(x < 0.1 for _, x in late)
    with pytest.raises(traces.TraceError, match="speed"):
        traces.replay(steps, None, None, speed=0)
