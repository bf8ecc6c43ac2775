#!/usr/bin/python3
"""Drain one AP node before it leaves (playbooks/remove-node.yml).

Usage: mec-drain-node NODE MANAGER_URL ADMIN_TOKEN_FILE

1. nova: disable the node's nova-compute service, so the scheduler places nothing there.
2. MEC-ConPaaS: migrate every service whose home is NODE to the up node with the most free
   slots (make-before-break migrations of the manager), waiting for each operation.
3. nova: fail if instances that MEC-ConPaaS does not manage remain on the node.
Prints one JSON object {"changed": [...]}.
Limitation: the manager's REST API lists services per tenant, so this drains the services
of the tenant of ADMIN_TOKEN_FILE (the admin tenant).
"""
import json
import sys
import time
import urllib.request

import openstack


def api(url, token, method="GET", body=None):
    req = urllib.request.Request(url, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def main():
    node, manager, token_file = sys.argv[1:4]
    token = open(token_file).read().strip()
    changed = []
    conn = openstack.connect()
    for svc in conn.compute.services(binary="nova-compute", host=node):
        if svc.status != "disabled":
            conn.compute.disable_service(svc, disabled_reason="draining: leaving the cloud")
            changed.append("nova-compute on %s disabled" % node)
    nodes = api(manager + "/v1/nodes", token).get("nodes", [])
    for svc in api(manager + "/v1/services", token).get("services", []):
        if svc["home_node"] != node or svc["state"] != "RUNNING":
            continue
        targets = [n for n in nodes if n["name"] != node and n["state"] == "up"]
        if not targets:
            sys.exit("no other up node to drain %s to" % svc["name"])
        target = max(targets, key=lambda n: n.get("max_instances", 0)
                     - len((n.get("report") or {}).get("instances", [])))
        op = api(manager + "/v1/services/%s/migrate" % svc["name"], token, "POST",
                 {"to": target["name"]})
        op_id = op.get("operation", {}).get("id") or op.get("id")
        for _ in range(300):
            state = api(manager + "/v1/operations/%s" % op_id, token)["operation"]["state"]
            if state not in ("PENDING", "RUNNING"):
                break
            time.sleep(2)
        if state != "DONE" and state != "SUCCEEDED":
            sys.exit("migration of %s to %s ended %s" % (svc["name"], target["name"], state))
        changed.append("service %s migrated to %s" % (svc["name"], target["name"]))
    left = [s.name for s in conn.compute.servers(all_projects=True, host=node)]
    if left:
        sys.exit("instances still on %s (not managed by MEC-ConPaaS): %s" % (node, ", ".join(left)))
    print(json.dumps({"changed": changed}))


if __name__ == "__main__":
    main()
