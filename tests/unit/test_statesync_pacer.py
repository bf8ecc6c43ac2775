"""The bulk copy's pace: batches of an eighth of a second's worth of bytes, and the
total held to the rate (measured on the monotonic clock, not assumed)."""
import time

from mec_conpaas.agents.node import statesync


def test_pacer_holds_the_rate_with_small_batches():
    rate = 4 << 20
    pacer = statesync.Pacer(rate, 64 << 20)
    assert pacer.limit == int(rate * statesync.Pacer.PACE_S)
    t0 = time.monotonic()
    for _ in range(4):
        pacer.sent_batch(pacer.limit)
    elapsed = time.monotonic() - t0
    assert elapsed >= 4 * pacer.limit / rate - 0.01


def test_no_rate_no_wait_and_the_batch_limit_stays():
    pacer = statesync.Pacer(0, 64 << 20)
    assert pacer.limit == 64 << 20
    t0 = time.monotonic()
    pacer.sent_batch(1 << 30)
    assert time.monotonic() - t0 < 0.05
