"""The nova backend writes the bundle, state directory, agent secret and instance.json
into an instance's root as host root: a re-adoption writes through a tree the tenant
controlled, so links planted there must not carry any of it outside the root."""
import os
import shutil
import tempfile

import pytest

from mec_conpaas import exception
from mec_conpaas.agents.node import containers
from mec_conpaas.agents.node import nova
from mec_conpaas.drivers import nova_image
from tests.unit.test_bundles import f
from tests.unit.test_bundles import tgz

IDS = (100000, 100000)


@pytest.fixture
def node(conf):
    top = tempfile.mkdtemp(prefix="mec-nova-adopt-")
    os.chmod(top, 0o711)
    conf.set_override("instances_path", os.path.join(top, "instances"), group="node_agent")
    yield nova.NovaContainers(conf, fetch_bundle=None)
    conf.clear_override("instances_path", group="node_agent")
    shutil.rmtree(top)


@pytest.fixture
def tree(tmp_path):
    """An instance root (etc/ as a booted image has it) and a directory outside it that
    stands for the node's own files."""
    root, outside = tmp_path / "root", tmp_path / "node-etc"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    (outside / "passwd").write_text("node's own\n")
    return root, outside


def bundle(tmp_path):
    return tgz(tmp_path, [f("run.sh"), f("index.html", b"hi\n", 0o644)])


def listing(path):
    return sorted(os.listdir(path)), (path / "passwd").read_text()


def test_first_adoption_writes_everything_owned_by_the_instances_root(node, tree, tmp_path):
    root, _ = tree
    node._unpack(str(root), bundle(tmp_path), "SECRET", IDS)
    nova.write_file(str(root), nova_image.INSTANCE_CONFIG, '{"env": {}}', IDS, mode=0o644)
    assert (root / "srv/app/index.html").read_text() == "hi\n"
    secret = root / containers.AGENT_SECRET_FILE
    assert secret.read_text() == "SECRET" and oct(secret.stat().st_mode & 0o777) == "0o400"
    for path in (root / "srv/app/run.sh", root / "var/lib/service", secret,
                 secret.parent, root / nova_image.INSTANCE_CONFIG):
        assert (path.stat().st_uid, path.stat().st_gid) == IDS, path
    # Again (a retry after the agent lost its metadata): replaced, not appended to.
    node._unpack(str(root), bundle(tmp_path), "SECRET2", IDS)
    assert secret.read_text() == "SECRET2"
    assert sorted(os.listdir(root / "srv/app")) == ["index.html", "run.sh"]


@pytest.mark.parametrize("planted", ["srv", "srv/app", "var/lib", "var/lib/service",
                                     "etc/mec-conpaas"])
def test_a_planted_directory_link_is_refused_and_nothing_leaves_the_root(
        node, tree, tmp_path, planted):
    root, outside = tree
    before = listing(outside)
    link = root / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    try:
        node._unpack(str(root), bundle(tmp_path), "SECRET", IDS)
    except exception.Conflict as e:
        assert "is a link or not a directory" in e.message, e.message
    else:
        # srv/app is the one path replaced rather than refused: the link itself goes.
        assert planted == "srv/app" and not os.path.islink(link)
    assert listing(outside) == before
    assert (outside.stat().st_uid, outside.stat().st_gid) == (0, 0)


@pytest.mark.parametrize("planted", [nova_image.INSTANCE_CONFIG,
                                     nova_image.INSTANCE_CONFIG + ".tmp",
                                     containers.AGENT_SECRET_FILE])
def test_a_planted_file_link_is_replaced_not_followed(tree, planted):
    root, outside = tree
    before = listing(outside)
    (root / planted).parent.mkdir(parents=True, exist_ok=True)
    (root / planted).symlink_to(outside / "passwd")
    final = planted.removesuffix(".tmp")
    nova.write_file(str(root), final, "written", IDS)
    assert listing(outside) == before
    assert not os.path.islink(root / final) and (root / final).read_text() == "written"


def test_metadata_reads_take_no_walk_of_the_domains_tasks(node, monkeypatch):
    """domain_name, root_ids and address run inside migration's frozen window: the
    metadata is read from its file, without looking for a task of the domain (the lxc
    backend's took no such walk either)."""
    base = os.path.join(node.root, "i1")
    os.makedirs(base)
    with open(os.path.join(base, "meta.json"), "w") as out:
        out.write('{"domain": "instance-0000002a", "root_ids": [100000, 100000], '
                  '"address": "10.232.0.9"}')
    walks = []
    monkeypatch.setattr(containers, "_container_pid", lambda name: walks.append(name))
    assert node.domain_name("i1") == "instance-0000002a"
    assert node.root_ids("i1") == (100000, 100000)
    assert node.address("i1") == "10.232.0.9"
    assert walks == []
    assert node.domain_name("gone") == ""
