"""Mobility traces: who is at which access point when.

A trace is a CSV file ``time_s,user,ap`` (``#`` lines are comments; a
header row is allowed), one row per attachment change; ``ap`` ``-``
detaches the user.  ``mec_conpaas/etc/mobility-trace.csv`` is the bundled,
documented example.  :func:`replay` drives any ``attach(user, ap)`` /
``detach(user)`` pair in real time or faster; the embedded edge's
:mod:`users` module is the one it drives.
"""
import csv
import dataclasses
import os
import re
import time

DEFAULT = os.path.join(os.path.dirname(__file__), os.pardir, "etc", "mobility-trace.csv")
USER_RE = re.compile(r"^[a-z][a-z0-9-]{0,10}$")
DETACH = "-"


class TraceError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Step:
    time_s: float
    user: str
    ap: str  # or DETACH


def parse(lines, aps=None, source="trace"):
    """Steps of a trace, checked: times are numbers that never go back,
    users are valid names, access points exist (when ``aps`` is given)."""
    steps, last = [], 0.0
    rows = csv.reader(line for line in lines
                      if line.strip() and not line.lstrip().startswith("#"))
    for n, row in enumerate(rows, 1):
        row = [c.strip() for c in row]
        if n == 1 and row[:1] == ["time_s"]:
            continue
        where = "%s, data row %d" % (source, n)
        if len(row) != 3:
            raise TraceError("%s: expected 3 columns time_s,user,ap, got %d" % (
                where, len(row)))
        try:
            t = float(row[0])
        except ValueError:
            raise TraceError("%s: time_s %r is not a number" % (where, row[0])) from None
        if t < last or t != t:
            raise TraceError("%s: time_s %s goes back (previous %s): sort the "
                             "trace by time" % (where, row[0], last))
        if not USER_RE.match(row[1]):
            raise TraceError("%s: user %r must be 1-11 lowercase letters, digits "
                             "or '-', starting with a letter" % (where, row[1]))
        if row[2] != DETACH and aps is not None and row[2] not in aps:
            raise TraceError("%s: unknown access point %r (the edge has %s)" % (
                where, row[2], ", ".join(aps)))
        steps.append(Step(t, row[1], row[2]))
        last = t
    if not steps:
        raise TraceError("%s has no steps" % source)
    return steps


def load(path, aps=None):
    with open(path, newline="") as f:
        return parse(f, aps, source=path)


def replay(steps, attach, detach, speed=1.0, clock=time.monotonic, sleep=time.sleep,
           log=None):
    """Apply ``steps`` at their times divided by ``speed``.  Returns
    ``[(step, seconds late)]``: how far behind the trace each step was
    applied (an attach takes some time; it is measured, not hidden)."""
    if speed <= 0:
        raise TraceError("speed must be > 0, not %s" % speed)
    t0, out = clock(), []
    for step in steps:
        due = t0 + step.time_s / speed
        wait = due - clock()
        if wait > 0:
            sleep(wait)
        late = max(0.0, clock() - due)
        if step.ap == DETACH:
            detach(step.user)
        else:
            attach(step.user, step.ap)
        if log:
            log("t=%.1f s %s -> %s" % (step.time_s, step.user, step.ap))
        out.append((step, late))
    return out


def locations(steps, at):
    """Where every user is at trace time ``at`` (None: detached)."""
    where = {}
    for s in steps:
        if s.time_s > at:
            break
        where[s.user] = None if s.ap == DETACH else s.ap
    return where
