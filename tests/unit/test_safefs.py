"""Files the node agent reads from a container's tree are never reached
through a link, whatever the tenant puts there."""
import os
import shutil
import tempfile

import pytest

from mec_conpaas import exception
from mec_conpaas import safefs
from mec_conpaas.agents.node import containers as containers_mod

IID = "0b5f2d0c-5d7e-4a77-8f2e-7d3c1f4a9e01"


@pytest.fixture
def node(conf):
    # Instances' unprivileged roots must reach their files: every directory
    # on the way lets others through, which pytest's tmp_path does not.
    top = tempfile.mkdtemp(prefix="mec-safefs-")
    os.chmod(top, 0o711)
    conf.set_override("instances_path", os.path.join(top, "instances"), group="node_agent")
    yield containers_mod.LibvirtContainers(conf, fetch_bundle=None)
    conf.clear_override("instances_path", group="node_agent")
    shutil.rmtree(top)


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "node-agent.token"
    path.write_text("TOP-SECRET-TOKEN")
    return path


def log_dir(node):
    path = os.path.join(node._paths(IID)["upper"], "var", "log")
    os.makedirs(path)
    return path


def test_log_is_read(node):
    with open(os.path.join(log_dir(node), "mec-app.log"), "wb") as f:
        f.write(b"x" * 70000 + b"last line\n")
    text = node.logs(IID)
    assert len(text) == 65536 and text.endswith("last line\n")
    assert node.logs("f" * 8 + IID[8:]) == ""  # no such instance: no log


def test_log_replaced_by_a_link_is_refused(node, secret):
    os.symlink(str(secret), os.path.join(log_dir(node), "mec-app.log"))
    with pytest.raises(exception.Conflict, match="link") as e:
        node.logs(IID)
    assert "TOP-SECRET" not in e.value.message


def test_log_directory_replaced_by_a_link_is_refused(node, secret):
    var = os.path.join(node._paths(IID)["upper"], "var")
    os.makedirs(var)
    os.rename(secret, secret.parent / "mec-app.log")
    os.symlink(str(secret.parent), os.path.join(var, "log"))
    with pytest.raises(exception.Conflict, match="'log' is a link"):
        node.logs(IID)


def test_log_fifo_neither_blocks_nor_feeds(node):
    os.mkfifo(os.path.join(log_dir(node), "mec-app.log"))
    with pytest.raises(exception.Conflict, match="not a regular file"):
        node.logs(IID)


def test_components_refuse_what_could_leave_the_root():
    assert safefs.components("./a//b/") == ["a", "b"]
    for bad in ("/etc", "a/../../b", "..", "a\0b", "x" * 256, "a/" * 2048):
        with pytest.raises(safefs.UnsafePath):
            safefs.components(bad)
