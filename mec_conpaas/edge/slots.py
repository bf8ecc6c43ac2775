"""Edge slots: more than one test or benchmark edge on one machine.

An embedded edge owns names (its namespace prefix), a manager port and an
address plan in the root namespace, so two edges with the same ones cannot
be up at once.  ``tools/with-edge-slot`` hands each functional run or
benchmark a free slot number in ``MEC_EDGE_SLOT``; slot 0 is the plan as
written, slot N moves the prefix, the port and every 10.x network of the
topology out of the way of the other slots.
"""
import ipaddress
import os

import yaml

ENV = "MEC_EDGE_SLOT"
SLOTS = 3           # tools/with-edge-slot hands out 0 .. SLOTS-1
OCTET_STEP = 30     # slot N: 10.X.. becomes 10.(X - 30 N)..
PORT_STEP = 20


def current():
    """The slot this process was given (0 when none was)."""
    value = os.environ.get(ENV, "0") or "0"
    if not value.isdigit() or int(value) >= SLOTS:
        raise ValueError("%s=%r: use a slot number from 0 to %d (tools/with-edge-slot "
                         "sets it)" % (ENV, value, SLOTS - 1))
    return int(value)


def _shift(value, slot):
    """An address or network of 10.0.0.0/8 moved to the slot's plan; any
    other value unchanged."""
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return value
    if net.version != 4 or not net.subnet_of(ipaddress.ip_network("10.0.0.0/8")):
        return value
    octets = str(value).split(".")
    second = int(octets[1]) - OCTET_STEP * slot
    if second < 1:
        raise ValueError("%s cannot move to slot %d: its plan runs below 10.1/16"
                         % (value, slot))
    octets[1] = str(second)
    return ".".join(octets)


def _walk(obj, slot):
    if isinstance(obj, dict):
        return {k: _walk(v, slot) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_walk(v, slot) for v in obj]
    if isinstance(obj, str):
        return _shift(obj, slot)
    return obj


def apply(prefix, port, topology_file, state_dir, slot=None):
    """``(prefix, port, topology_file)`` of this edge in ``slot`` (default:
    the process's).  For slots above 0 the moved topology is written into
    ``state_dir``, which the edge removes with the rest of its state."""
    from mec_conpaas.edge import network
    slot = current() if slot is None else slot
    if slot == 0:
        return prefix, port, topology_file
    with open(topology_file) as f:
        topo = yaml.safe_load(f) or {}
    topo.setdefault("user_endpoint", network.USER_ENDPOINT)
    topo = _walk(topo, slot)
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, "topology-slot%d.yaml" % slot)
    with open(path, "w") as f:
        yaml.safe_dump(topo, f, sort_keys=False)
    return prefix.rstrip("-") + str(slot) + "-", port + PORT_STEP * slot, path
