"""Run on the master by tests/deploy/test_openstack_driver.py: one GET every 10 ms to
URL until the file STOP exists, then one JSON line: requests answered, failed, the
longest time between two answers, the first errors.

    interval_client.py URL STOP
"""
import json
import os
import sys
import time
import urllib.request


def main(url, stop):
    ok = failed = 0
    errors = []
    last = time.monotonic()
    gap = 0.0
    while not os.path.exists(stop):
        t = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
            ok += 1
            now = time.monotonic()
            gap, last = max(gap, now - last), now
        except Exception as e:  # every failure counts, whatever its kind
            failed += 1
            errors.append(repr(e)[:160])
        time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))
    print(json.dumps({"ok": ok, "failed": failed, "longest_gap_ms": round(gap * 1000, 1),
                      "errors": errors[:5]}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
