"""Isolation rule updates in place, with real nftables in network namespaces: the
tables stay (a counter object added to them survives: they were not deleted and
re-created, whose base chains' hooks lost packets at every proxy switch), and the
result is the ruleset a fresh application of the new state gives, sets that went
away included."""
import os
import subprocess
import uuid

import pytest

from mec_conpaas.agents.node import isolation

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")
AGENT_PORT = 9681
WITNESS = "\tcounter witness {\n\t\tpackets 0 bytes 0\n\t}\n\n"


def nft(ns, *args, stdin=None):
    return subprocess.run(["ip", "netns", "exec", ns, "nft"] + list(args), input=stdin,
                          check=True, capture_output=True, text=True).stdout


def listing(ns):
    return "".join(nft(ns, "list", "table", family, isolation.TABLE)
                   for family in isolation.FAMILIES)


@pytest.fixture
def namespaces():
    names = ["meciso-up-%s" % uuid.uuid4().hex[:6] for _ in range(2)]
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    yield names
    for n in names:
        subprocess.run(["ip", "netns", "del", n])


def test_update_keeps_the_chains_and_equals_a_fresh_ruleset(namespaces):
    updated, fresh = namespaces
    before = isolation.render(
        {"svc-a": {"near": [{"addr": "10.230.1.2"}]},
         "svc-b": {"near": [{"addr": "10.230.1.3"}], "far": [{"addr": "10.230.3.4"}]}},
        ["10.230.1.0/24", "10.230.3.0/24"], {"veth-a": "10.230.1.2"}, ["wlan0"],
        AGENT_PORT)
    # A migration's switch: svc-a moved to another AP, svc-b is gone.
    after = isolation.render(
        {"svc-a": {"near": [{"addr": "10.230.3.2"}], "draining": [{"addr": "10.230.1.2"}]}},
        ["10.230.1.0/24", "10.230.3.0/24"], {}, ["wlan0"], AGENT_PORT)
    for ns in namespaces:
        nft(ns, "-f", "-", stdin=before)
        for family in isolation.FAMILIES:
            nft(ns, "add", "counter", family, isolation.TABLE, "witness")
    assert "svc_svcb" in listing(updated)

    nft(updated, "-f", "-", stdin=isolation.in_place(after, before))
    nft(fresh, "-f", "-", stdin=after)  # render's own delete-and-create

    assert listing(updated).count("counter witness") == 2
    assert "witness" not in listing(fresh)
    assert listing(updated).replace(WITNESS, "") == listing(fresh)
    assert "svc_svcb" not in listing(updated)
