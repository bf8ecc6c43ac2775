#!/usr/bin/python3
"""Drain one AP node before it leaves (playbooks/remove-node.yml).

Usage: mec-drain-node NODE MANAGER_URL ADMIN_TOKEN_FILE [MANAGER_CONFIG]

The manager is called as the PaaS admin: with the admin token, or, when MANAGER_CONFIG
(default /etc/mec-conpaas/mec-conpaas.conf) says [api] auth_strategy = keystone, with a
keystone token of OS_CLOUD's user (the cloud admin), since that manager refuses people's
PaaS tokens.

1. nova: disable the node's nova-compute service, so the scheduler places nothing there.
2. MEC-ConPaaS: drain the node (POST /v1/nodes/NODE/drain with the admin token): the
   manager marks it unschedulable and moves the instances of every tenant's services off
   it, make-before-break, to the nearest, least loaded other nodes; wait for each of the
   operations it returns, then drain again to check that nothing is left there.
3. nova: wait until the node holds no server. MEC-ConPaaS's own (their metadata names
   their instance) that no operation accounts for, e.g. one a delete left while the node
   did not answer, are removed by the manager's sweep, which a drain with nothing more to
   move starts at once; fail if one is still there after LEFT_WAIT seconds, or at once if
   a server MEC-ConPaaS does not manage is on the node.
Prints one JSON object {"changed": [...]}; a run on a node already drained and empty
changes nothing.  Errors (a busy service, too few free slots elsewhere, a failed move) end
the run with the manager's message; rerun once it is dealt with.
"""
import configparser
import json
import sys
import time
import urllib.error
import urllib.request

import openstack

REASON = "leaving the cloud (remove-node.yml)"
# nova-compute's disabled reason; add-node.yml enables a host disabled with it again
# (mec_os_ensure.py's DRAIN_REASON).
DRAIN_REASON = "draining: leaving the cloud"
ROUNDS = 3          # drains until the node holds nothing
WAIT = 900          # seconds for one round's operations
POLL = 0.5          # seconds between looks at them (a GET of the local manager each)
LEFT_WAIT = 180     # seconds for the manager's sweep to remove its leftovers there
# The server metadata key naming a MEC-ConPaaS instance (mec_conpaas.drivers.openstack).
INSTANCE_PROPERTY = "mec_instance_id"


def api(url, token, method="GET", body=None):
    """``token``: the request's auth header as (name, value)."""
    req = urllib.request.Request(url, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={token[0]: token[1],
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(e)
        sys.exit("%s %s: HTTP %d: %s" % (method, url, e.code, message))


def wait(manager, token, ops):
    """Wait for the drain's operations; exit naming the ones that failed."""
    deadline = time.monotonic() + WAIT
    pending = {o["id"]: o for o in ops}
    ended = {}
    while pending:
        if time.monotonic() > deadline:
            sys.exit("drain operations still running after %ds: %s" % (
                WAIT, ", ".join(pending)))
        time.sleep(POLL)
        for op_id in list(pending):
            op = api(manager + "/v1/operations/" + op_id, token)["operation"]
            if op["state"] in ("SUCCEEDED", "FAILED"):
                ended[op_id] = dict(op, tenant=pending.pop(op_id).get("tenant"))
    ended = [ended[o["id"]] for o in ops]
    failed = ["%s of tenant %s: %s" % (o["service"], o["tenant"], o["error"])
              for o in ended if o["state"] != "SUCCEEDED"]
    if failed:
        sys.exit("moving services off the node failed: " + "; ".join(failed))
    return ended


def main():
    node, manager, token_file = sys.argv[1:4]
    config = configparser.ConfigParser(interpolation=None, strict=False)
    config.read(sys.argv[4] if len(sys.argv) > 4 else "/etc/mec-conpaas/mec-conpaas.conf")
    changed = []
    conn = openstack.connect()
    if config.get("api", "auth_strategy", fallback="token") == "keystone":
        token = ("X-Auth-Token", conn.auth_token)
    else:
        token = ("Authorization", "Bearer " + open(token_file).read().strip())
    for svc in conn.compute.services(binary="nova-compute", host=node):
        if svc.status != "disabled":
            conn.compute.disable_service(svc, disabled_reason=DRAIN_REASON)
            changed.append("nova-compute on %s disabled" % node)
    if api(manager + "/v1/nodes/" + node, token)["node"]["schedulable"]:
        changed.append("MEC-ConPaaS node %s disabled" % node)
    for _ in range(ROUNDS):
        ops = api(manager + "/v1/nodes/%s/drain" % node, token, "POST",
                  {"reason": REASON})["operations"]
        if not ops:
            break
        for op in wait(manager, token, ops):
            changed.append("service %s of tenant %s moved off %s" % (
                op["service"], op["tenant"], node))
    else:
        sys.exit("%s held instances again after each of %d drains: an operation keeps "
                 "placing them there" % (node, ROUNDS))
    changed += ["MEC-ConPaaS's leftover %s on %s removed (the manager's sweep)" % (name, node)
                for name in wait_empty(conn, node)]
    print(json.dumps({"changed": changed}))


def describe(server):
    return "%s (%s%s)" % (server.name, server.status,
                          ", " + server.task_state if server.task_state else "")


def wait_empty(conn, node):
    """Until nova lists no server on the node: the manager's sweep removes its
    own leftovers there; anyone else's is the operator's to deal with. Returns the
    names of the leftovers waited for."""
    deadline = time.monotonic() + LEFT_WAIT
    seen = []
    while True:
        left = list(conn.compute.servers(all_projects=True, host=node))
        if not left:
            return seen
        seen += [s.name for s in left if s.name not in seen]
        foreign = [s for s in left if INSTANCE_PROPERTY not in (s.metadata or {})]
        if foreign:
            sys.exit("instances still on %s (not managed by MEC-ConPaaS): %s; delete or "
                     "move them, then rerun" % (node, ", ".join(map(describe, foreign))))
        if time.monotonic() > deadline:
            sys.exit("MEC-ConPaaS instances still on %s after %d s, which no operation "
                     "accounts for and the manager's sweep did not remove: %s; see "
                     "`journalctl -u mec-conpaas-manager` (sweep), then rerun" % (
                         node, LEFT_WAIT, ", ".join(map(describe, left))))
        time.sleep(2)


if __name__ == "__main__":
    main()
