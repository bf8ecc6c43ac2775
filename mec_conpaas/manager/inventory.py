"""The cloud's inventory of compute hosts, merged with the node agents' view.

Under a driver whose cloud schedules the nodes' resources itself (nova and
placement under ``openstack``), the PaaS and the cloud must not disagree
about which nodes exist, which are up and how much still fits: two
schedulers sharing a Pi's memory without knowing of each other is what
issue 9 set out to end.  ``CloudDriver.node_inventory()`` gives the cloud's
view; this module applies it to placement's capacity and to the node views
of the API.  Without one (the ``lxc`` driver) nothing changes.
"""
import math

UNREGISTERED = ("a compute host of the cloud with no node agent registered: it gets "
                "no instances until its node agent registers with the manager")


def host_of(inventory, node):
    """The inventory entry of a node (matched by host name, then name)."""
    if not inventory:
        return None
    return inventory.get(node.hostname) or inventory.get(node.name)


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
