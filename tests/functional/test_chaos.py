"""Chaos: random operations while the manager and node agents are SIGKILLed.

A seeded RNG (``MEC_CHAOS_SEED``; the seed is printed, so a failure can be
replayed) drives creates, scales, migrations, node drains (+ enable) and
deletes without waiting for them, while the manager is SIGKILLed at random
moments (``MEC_CHAOS_MANAGER_KILLS``, default 20, restarted at once) and a
random node agent (``MEC_CHAOS_AGENT_KILLS``, default 5, restarted after 1-9
s, so sometimes after its node was seen down); ``MEC_CHAOS_OPERATIONS``
(default 40) and ``MEC_CHAOS_SECONDS`` (default 120) bound the run.  The
Wi-Fi client of every access point probes every service's endpoint all the
time, from its create's success until its delete is sent.

Then, within a bound, everything must have converged:

* every operation ended, SUCCEEDED or FAILED with an error text;
* every service is RUNNING with its requested count (its last successful
  create or scale's; a failed scale-out is rolled back to the previous
  count, a failed scale-in still completes its removals) and only ACTIVE
  instances, or ERROR with a reason; all of them can then be deleted;
* the containers each node agent lists are exactly the store's instances on
  that node; each access point's HAProxy serves exactly the services with
  instances, with exactly their instances' addresses; no endpoint port in
  the service range is listened on for a service that is gone.

And no probe failed except where the design allows it.  The data path
(HAProxy on each access point, the containers under libvirtd) does not
involve the manager or the node agents, so a kill by itself must cost no
request.  Allowed, and only these:

1. after a service's delete was sent (its endpoint goes away by design);
2. during an operation on that service that a kill *disturbed* (a manager
   kill or a node agent outage overlapped it), until 1 s after it ended
   (HAProxy's health checks, ``fall 2`` at 300 ms): a resumed scale-in or
   delete removes the instances it had taken out of service without a new
   drain period, and a resumed or failed migration may roll back, removing
   the instance the proxies were being switched to;
3. on the access point whose node agent was dead, for a service an
   operation changed during that outage: that HAProxy could not be told,
   and keeps the old backends until the sweep pushes it the current plan
   after the agent is back (within heartbeat timeout + sweep interval +
   1 s after the restart, extended while that agent or the manager is
   killed again before it: ``unsynced_windows``).

4. during an undisturbed operation on that same service, until 1 s after
   it ended: the issue's rule is that no request fails on a service *no
   operation is touching*.  These failures are still counted, printed and
   their timeline saved, because make-before-break migration, drain,
   scale-in with a drain period and scale-out should cost no request at
   all, and test_stateful, test_lifecycle and test_drain assert exactly
   that with a client every 10 ms.  Here one probe in ~4,600 once timed
   out during an undisturbed migration (seed 670245182, not explained
   yet: not a request left with the destroyed source, whose requests
   HAProxy's log shows answered by the new instance after the kill; see
   README's chaos paragraph), so this test does not fail on it.

Another service's create or delete (it reloads every access point's
HAProxy: test_proxy_reload) is no operation on the probed service, so it
must cost that service no request.

It runs last in a session (tests/functional/conftest.py), and whatever
happens it leaves the edge empty (every service deleted, forced if need
be, nodes enabled, daemons running; ``chaos.clean_up``): a failed run once
left its services behind, and their containers filled every access point
for the tests after it.
"""
import json
import os
import random
import time

from mec_conpaas.edge import chaos
from tests.functional.conftest import all_containers
from tests.functional.conftest import wait_op

GRACE = 1.0


def env_int(name, default):
    return int(os.environ.get(name, default))


def wait_until(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last is True:
            return
        assert time.monotonic() < deadline, "%s: %s" % (what, last)
        time.sleep(0.5)


def unsynced_windows(kills, resync):
    """Per access point, the (start, agent back, end) windows in which its
    HAProxy may not have been told what changed: from its node agent's kill
    until ``resync`` after it is back, extended while another kill of that
    agent or of the manager (whose sweep pushes the proxies) starts before
    the window ends (a seed once killed ap-3's agent three times and the
    manager three times within 20 s, and ap-3 never learned of a service
    created in the first outage until then)."""
    windows = {}
    for k in sorted(kills, key=lambda k: k["killed"]):
        if k["what"] != "agent":
            continue
        start, back, end = k["killed"], k["back"], k["back"] + resync
        extended = True
        while extended:
            extended = False
            for o in kills:
                if start < o["killed"] <= end and o["back"] + resync > end and (
                        o["what"] == "manager" or o["ap"] == k["ap"]):
                    end = o["back"] + resync
                    if o["what"] == "agent":
                        back = max(back, o["back"])
                    extended = True
        windows.setdefault(k["ap"], []).append((start, back, end))
    return windows


def unexplained_failures(run, probes, ops, heartbeat_timeout, sweep_interval):
    """Probe failures no rule of the module docstring allows, and those
    only rule 4 allows (during an undisturbed operation on the service)."""
    kills = run.killer.kills
    by_service = {}
    for op in ops:
        start, end = chaos.wall(op["created_at"]), chaos.wall(op["updated_at"])
        by_service.setdefault(op["service"], []).append((start, end, op))
    resync = heartbeat_timeout + sweep_interval + GRACE

    def overlaps(a0, a1, b0, b1):
        return a0 <= b1 and b0 <= a1

    def disturbed(start, end):
        return any(overlaps(start, end, k["killed"], k["back"] + (
            resync if k["what"] == "agent" else 0)) for k in kills)

    unsynced = unsynced_windows(kills, resync)
    bad, touched = [], []
    for r in probes:
        if r["ok"]:
            continue
        name = r["svc"]
        if name in run.deleting and r["t1"] >= run.deleting[name]:
            continue  # rule 1
        if any(overlaps(r["t0"], r["t1"], s, e + GRACE) and disturbed(s, e)
               for s, e, _ in by_service.get(name, [])):
            continue  # rule 2
        if any(w0 <= r["t1"] and r["t0"] <= w1
               and any(overlaps(s, e, w0, back) for s, e, _ in by_service.get(name, []))
               for w0, back, w1 in unsynced.get(r["ap"], [])):
            continue  # rule 3
        if any(overlaps(r["t0"], r["t1"], s, e + GRACE)
               for s, e, _ in by_service.get(name, [])):
            touched.append(r)  # rule 4: counted, allowed
            continue
        bad.append(r)
    return bad, touched


def test_chaos(edge, admin):
    assert admin.services() == [] and not any(all_containers(edge).values()), \
        "the chaos test needs an empty edge"
    seed = int(os.environ.get("MEC_CHAOS_SEED") or random.SystemRandom().randrange(
        2**32))
    print("MEC_CHAOS_SEED=%d" % seed)
    run = chaos.Chaos(edge, admin, seed,
                      operations=env_int("MEC_CHAOS_OPERATIONS", 40),
                      manager_kills=env_int("MEC_CHAOS_MANAGER_KILLS", 20),
                      agent_kills=env_int("MEC_CHAOS_AGENT_KILLS", 5),
                      duration=env_int("MEC_CHAOS_SECONDS", 120))
    try:
        run_and_judge(edge, admin, run, seed)
    finally:
        left = chaos.clean_up(edge, admin)
    assert not left, left


def run_and_judge(edge, admin, run, seed):
    t0 = time.monotonic()
    try:
        run.run()
        converged = run.converge(timeout=180)
        print("chaos: converged %.1f s after the last kill" % converged)
        # Leftovers on nodes that were down go with the sweep.
        wait_until("every instance ACTIVE", lambda: [
            (s["name"], i) for s in admin.services() for i in s["instances"]
            if i["state"] != "ACTIVE"] or True, 60)
    finally:
        probes = run.finish_probes()
    assert len(run.killer.kills) == run.manager_kills + run.agent_kills, \
        run.killer.kills
    ops = [o for o in admin.operations()
           if chaos.wall(o["created_at"]) >= run.started - 1]
    summary = {"seed": seed, "operations": len(ops), "calls": len(run.calls),
               "accepted": sum(c["outcome"] == "accepted" for c in run.calls),
               "kills": len(run.killer.kills), "probes": len(probes),
               "failed_probes": sum(not r["ok"] for r in probes),
               "seconds": round(time.monotonic() - t0, 1)}
    print("chaos:", json.dumps(summary))
    assert ops, "no operation was accepted"

    # Every operation ended, a failure with its reason.
    for op in ops:
        assert op["state"] in chaos.TERMINAL, op
        assert op["state"] == "SUCCEEDED" or op["error"], op

    # Every service RUNNING with its count, or ERROR with a reason.
    for svc in admin.services():
        mine = [o for o in ops if o["service"] == svc["name"]]
        if svc["state"] == "RUNNING":
            assert svc["operation"] is None, svc
            assert [i["state"] for i in svc["instances"]] == \
                ["ACTIVE"] * chaos.expected_count(mine), (svc, mine)
        else:
            assert svc["state"] in ("ERROR", "FAILED") and svc["error"], svc

    # Nodes and proxies match the store.
    wait_until("the edge matches the store",
               lambda: chaos.consistency_problems(edge, admin) or True, 30)

    # No request failed where the design does not allow it.
    conf = edge.manager_opts
    bad, touched = unexplained_failures(
        run, probes, ops, conf["node_heartbeat_timeout"], conf["orphan_sweep_interval"])
    print("chaos: %d probe(s) failed during an undisturbed operation on their "
          "service (rule 4)" % len(touched))
    if bad or touched:
        path = "/tmp/mec-chaos-%d.json" % seed
        with open(path, "w") as f:
            json.dump({"seed": seed, "unexplained": bad, "rule4": touched,
                       "operations": ops,
                       "kills": run.killer.kills, "calls": run.calls,
                       "deleting": run.deleting,
                       "failed_probes": [r for r in probes if not r["ok"]]}, f,
                      indent=1)
        print("chaos: timeline in %s" % path)
    if bad:
        raise AssertionError(
            "seed %d: %d unexplained probe failure(s) (timeline in %s), first: %s"
            % (seed, len(bad), path, json.dumps(bad[:3])))

    # Whatever remains can be deleted, leaving nothing behind.
    for svc in admin.services():
        wait_op(admin, admin.delete_service(svc["name"]), 120)
    assert admin.services() == []
    wait_until("nothing left on the nodes",
               lambda: chaos.consistency_problems(edge, admin) or True, 30)
    assert not any(all_containers(edge).values()), all_containers(edge)

