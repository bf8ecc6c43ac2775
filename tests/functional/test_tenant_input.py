"""What a tenant puts in its bundle, log or state never reaches the node:
a bundle whose links chain outside is refused at upload; an app that links
its log (and its state) to a node secret gets neither the secret back nor
a write through the link when it migrates."""
import os
import tarfile
import time

import pytest

from mec_conpaas.cli import client as client_mod
from tests.functional.conftest import all_containers
from tests.functional.conftest import wait_op
from tests.functional.test_bad_input import file_member
from tests.functional.test_bad_input import make_tgz
from tests.functional.test_bad_input import special

RUN = file_member("run.sh")
CHAINS = {
    # The review's attack: a link to '.', a link through it to '..', a file
    # through both.
    "through-links": ([RUN, special("a", tarfile.SYMTYPE, "."),
                       special("a/b", tarfile.SYMTYPE, ".."),
                       file_member("a/b/x", b"evil")], "inside symlink 'a'"),
    "target-through-link": ([RUN, special("a", tarfile.SYMTYPE, "."),
                             special("b", tarfile.SYMTYPE, "a/..")], "points outside"),
}


@pytest.mark.parametrize("case", sorted(CHAINS))
def test_link_chain_bundle_refused(tmp_path, edge, admin, case):
    members, words = CHAINS[case]
    path = make_tgz(str(tmp_path / "chain.tar.gz"), members)
    with pytest.raises(client_mod.ApiError) as e:
        admin.create_service("generic", "chain", node="ap-1", bundle=path)
    assert e.value.status == 400 and words in e.value.message, e.value.message
    assert admin.services() == []
    assert os.listdir(edge.path("master", "bundles")) == []


def instance_fs(edge, ap, iid):
    """An instance's disk image as its access point sees it: mounted in the
    mount namespace its libvirtd and node agent share."""
    return "/proc/%d/root%s" % (edge._pid("libvirtd-" + ap),
                                edge.path("nodes", ap, "instances", iid, "fs"))


def test_links_to_node_secrets_are_not_followed(tmp_path, edge, admin):
    secret = edge.path("nodes", "ap-1", "node-agent.token")
    token = open(secret).read().strip()
    target_dir = edge.path("nodes", "ap-2")  # ap-2's state_path, its token inside
    # On a fresh instance 'real' is a link into ap-2's secrets; the state a
    # migration copies has 'real' as a directory: copying real/f must
    # replace the target's link, not write through it.
    run = ("#!/bin/sh\n"
           "S=/var/lib/service\n"
           "[ -e $S/real ] || ln -s %s $S/real\n"
           "ln -sfn /etc $S/etc\n"
           "rm -f /var/log/mec-app.log\n"
           "ln -s %s /var/log/mec-app.log\n"
           "exec sleep 100000\n" % (target_dir, secret)).encode()
    path = make_tgz(str(tmp_path / "thief.tar.gz"), [file_member("run.sh", run)])
    target_before = sorted(os.listdir(target_dir))
    wait_op(admin, admin.create_service("generic", "thief", node="ap-1", bundle=path))
    try:
        iid = admin.service("thief")["instances"][0]["id"]
        fs = instance_fs(edge, "ap-1", iid)
        log = os.path.join(fs, "upper", "var", "log", "mec-app.log")
        real = os.path.join(fs, "state", "real")
        deadline = time.monotonic() + 20
        while not (os.path.islink(log) and os.path.islink(real)) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert os.readlink(log) == secret  # the attack is in place
        (entry,) = admin.logs("thief")
        assert token not in entry["log"]
        assert "unavailable" in entry["log"] and "link" in entry["log"], entry["log"]

        # The app's later state (written here as the app could): a directory.
        os.unlink(real)
        os.mkdir(real)
        with open(os.path.join(real, "f"), "w") as f:
            f.write("state")
        wait_op(admin, admin.migrate("thief", "ap-2"))
        (inst,) = admin.service("thief")["instances"]
        assert inst["node"] == "ap-2"
        state = os.path.join(instance_fs(edge, "ap-2", inst["id"]), "state")
        assert os.readlink(os.path.join(state, "etc")) == "/etc"
        assert not os.path.islink(os.path.join(state, "real"))
        with open(os.path.join(state, "real", "f")) as f:
            assert f.read() == "state"
        assert sorted(os.listdir(target_dir)) == target_before
        assert token not in "".join(e["log"] for e in admin.logs("thief"))
    finally:
        wait_op(admin, admin.delete_service("thief"))
    assert all_containers(edge) == {ap: [] for ap in edge.net.aps}
