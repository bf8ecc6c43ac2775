"""Edge slots keep two test edges' names, ports and addresses apart."""
import ipaddress

import pytest
import yaml

from mec_conpaas.edge import network
from mec_conpaas.edge import slots
from mec_conpaas.manager import topology as topology_mod
from tests.functional.conftest import ISOLATED
from tests.functional.test_edge_tls import TOPOLOGY as TLS
from tests.functional.test_farcloud import CLOUD


def _networks(path):
    topo = topology_mod.load(path)
    nets = [topo["backbone_network"], topo.get("user_endpoint", network.USER_ENDPOINT)]
    for spec in topo["nodes"].values():
        nets += [v for k, v in spec.items() if k.endswith("_network")]
    return [ipaddress.ip_network(n) for n in nets]


def test_slot_zero_is_the_plan_as_written(tmp_path):
    assert slots.apply("mct-", 9690, ISOLATED, str(tmp_path), slot=0) == (
        "mct-", 9690, ISOLATED)


@pytest.mark.parametrize("plan", [ISOLATED, CLOUD, TLS])
def test_slots_share_no_name_port_or_network(tmp_path, plan):
    seen = []
    for slot in range(slots.SLOTS):
        prefix, port, path = slots.apply("mct-", 9690, plan, str(tmp_path / str(slot)),
                                         slot=slot)
        seen.append((prefix, port, _networks(path)))
        last = path
    every = [(p, port) for p, port, _ in seen]
    assert len(set(every)) == len(every)
    for i, (_, _, a) in enumerate(seen):
        for _, _, b in seen[i + 1:]:
            assert not any(x.overlaps(y) for x in a for y in b)
    # The shape (nodes, links, latencies) is unchanged.
    first = yaml.safe_load(open(plan))
    moved = yaml.safe_load(open(last))
    assert moved["links"] == first["links"]
    assert list(moved["nodes"]) == list(first["nodes"])


def test_the_tls_edge_plan_overlaps_no_other_test_edge_in_any_slot(tmp_path):
    """test_edge_tls's edge is up beside the session's (and, in another slot,
    beside any other run's).  The users' endpoint address is the same on
    every edge of a slot: it lives in each edge's own client namespaces."""
    mine = [n for slot in range(slots.SLOTS) for n in _networks(
        slots.apply("mcs-", 9697, TLS, str(tmp_path / ("t%d" % slot)), slot=slot)[2])]
    for plan in (ISOLATED, CLOUD):
        for slot in range(slots.SLOTS):
            other = _networks(slots.apply("mct-", 9690, plan, str(tmp_path / (
                "o%d%s" % (slot, len(plan)))), slot=slot)[2])
            assert not [(a, b) for a in mine for b in other if a.overlaps(b)
                        and a.num_addresses > 1]


def test_a_bad_slot_says_what_to_use(monkeypatch):
    monkeypatch.setenv(slots.ENV, "7")
    with pytest.raises(ValueError, match="from 0 to"):
        slots.current()
