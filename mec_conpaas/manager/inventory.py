"""The cloud's inventory of compute hosts, merged with the node agents' view.

Under a driver whose cloud schedules the nodes' resources itself (nova and
placement under ``openstack``), the PaaS and the cloud must not disagree
about which nodes exist, which are up and how much still fits: two
schedulers sharing a Pi's memory without knowing of each other is what
issue 9 set out to end.  ``CloudDriver.node_inventory()`` gives the cloud's
view; this module applies it to placement's capacity and to the node views
of the API.  Without one (the ``lxc`` driver) nothing changes.

The reserve check: an AP's own work (the Wi-Fi AP, HAProxy, the node
agent: ENORM's basic service) needs the reserve its node agent reports
(``report["capacity"]``: ``reserve_cpus``, ``reserve_memory_mb``).  nova
gives instances only what placement does not hold back as ``reserved``;
where placement holds back less than that reserve, the manager takes the
difference off the host's free vCPUs and memory itself, and ``node show``
says so and which nova option to set.
"""
import math

UNREGISTERED = ("a compute host of the cloud with no node agent registered: it gets "
                "no instances until its node agent registers with the manager")


# Per resource class: the host entry's key, its allocation ratio's key, the
# nova-compute option that reserves it, and the node reserve it must cover
# (placement counts whole vCPUs: half a core reserved is one vCPU).
RESERVES = (("vcpus", "cpu_allocation_ratio", "reserved_host_cpus",
             lambda cap: math.ceil(float(cap.get("reserve_cpus") or 0))),
            ("memory_mb", "ram_allocation_ratio", "reserved_host_memory_mb",
             lambda cap: int(cap.get("reserve_memory_mb") or 0)))


def host_of(inventory, node):
    """The inventory entry of a node (matched by host name, then name),
    checked against the reserve the node reports (``reserve_checked``)."""
    if not inventory:
        return None
    host = inventory.get(node.hostname) or inventory.get(node.name)
    return reserve_checked(host, node.report)


def reserve_checked(host, report):
    """``host`` with a ``reserve`` entry: placement's ``reserved`` against
    the node's reserve for each resource, and where placement's is smaller,
    the difference (times the allocation ratio, as placement counts it)
    taken off ``vcpus_free``/``memory_mb_free`` and a ``message`` for the
    admin.  Unchanged when the node has not reported its capacity yet or
    the cloud does not say what it reserves."""
    cap_report = (report or {}).get("capacity")
    if host is None or not cap_report:
        return host
    out = dict(host)
    check = {"node": {}, "placement": {}, "subtracted": {}, "message": None}
    fixes = []
    for key, ratio_key, option, need_of in RESERVES:
        need, reserved = need_of(cap_report), host.get(key + "_reserved")
        if reserved is None:
            return host
        check["node"][key], check["placement"][key] = need, reserved
        if reserved >= need:
            continue
        ratio, total = host.get(ratio_key) or 1.0, host[key]
        less = int((total - reserved) * ratio) - int((total - need) * ratio)
        out[key + "_free"] = host[key + "_free"] - less
        check["subtracted"][key] = less
        fixes.append("%s = %d" % (option, need))
    if fixes:
        check["message"] = (
            "placement reserves less on this compute host than the node keeps for its "
            "own work (%s): the manager takes %s off what it places here; set %s in "
            "the AP's nova-compute configuration (roles/nova_compute_lxc does)" % (
                ", ".join("%s %s < %s" % (k, check["placement"][k], check["node"][k])
                          for k in check["subtracted"]),
                " and ".join("%d %s" % (v, k) for k, v in check["subtracted"].items()),
                " and ".join(fixes)))
    out["reserve"] = check
    return out


def cap(entry, host, memory_mb, cpus):
    """Limit one node's capacity entry (``Cluster.capacity``) by the cloud:
    a host the cloud calls down is not up, and no more instances fit than
    its free memory and vCPUs take (an instance of ``memory_mb`` and
    ``cpus``, rounded up to whole vCPUs as its flavor is)."""
    fits = min(host["memory_mb_free"] // max(1, memory_mb),
               host["vcpus_free"] // max(1, math.ceil(cpus)))
    entry["up"] = entry["up"] and bool(host["up"])
    entry["max_instances"] = min(entry["max_instances"], entry["used"] + max(0, fits))
    return entry


def unregistered_view(name, host):
    """A compute host no node agent registered for, as ``node list`` shows
    it (a Pi that enrolled into nova by itself)."""
    return {"id": "", "name": name, "state": "up" if host["up"] else "down",
            "address": "", "hostname": name, "mac": "", "container_backend": "",
            "max_instances": 0, "schedulable": False, "disabled_reason": UNREGISTERED,
            "last_heartbeat": None, "report": {}, "registered": False, "cloud": host}


def annotate(views, nodes, inventory):
    """Node views (``api.app.node_view``, in the order of ``nodes``) with
    each node's ``cloud`` entry, followed by the compute hosts no node
    accounts for.  No inventory: the views unchanged."""
    if inventory is None:
        return views
    seen = set()
    for view, node in zip(views, nodes):
        host = host_of(inventory, node)
        view["cloud"] = host
        view["registered"] = True
        seen |= {node.hostname, node.name}
    return views + [unregistered_view(name, host)
                    for name, host in sorted(inventory.items()) if name not in seen]
