"""Cloud drivers as the manager sees them: found under the
``mec_conpaas.drivers`` entry point, their declared features checked before
an operation is accepted, and the nodes they can host.

A second, real driver is registered here the way a separate package would
register it (a distribution's entry_points.txt on sys.path): it creates,
deletes and lists through the node agent and declares no optional
feature.  The API runs on a real store; no node is called.
"""
import json
import os
import re
import sys
import textwrap

import pytest
from sqlalchemy import select

import mec_conpaas
from mec_conpaas import drivers
from mec_conpaas import exception
from mec_conpaas.api import app as app_mod
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.drivers import lxc
from tests.unit.test_api_nodes import Api
from tests.unit.test_api_nodes import Manager
from tests.unit.test_api_nodes import add_service
from tests.unit.test_api_nodes import edge  # noqa: F401 (fixture)
from tests.unit.test_api_nodes import snapshot

MODULE = "mec_test_minimal_driver"
DRIVER = '''
"""A driver with create, delete and list only, through the node agent."""
import dataclasses

from mec_conpaas.drivers import base


class MinimalDriver(base.CloudDriver):
    name = "minimal"

    def create_instance(self, node, spec):
        return node.agent.call("POST", "/v1/instances", dataclasses.asdict(spec),
                               timeout=180)

    def delete_instance(self, node, instance_id, handle=None):
        node.agent.instance_call("DELETE", instance_id)

    def list_instances(self, node):
        return node.agent.call("GET", "/v1/instances")["instances"]
'''


@pytest.fixture
def minimal(tmp_path, monkeypatch):
    """Register ``minimal`` (and ``broken``, whose module does not exist)."""
    (tmp_path / (MODULE + ".py")).write_text(DRIVER)
    info = tmp_path / "mec_test_minimal_driver-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mec-test-minimal-"
                                   "driver\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [mec_conpaas.drivers]
        minimal = %s:MinimalDriver
        broken = mec_test_no_such_module:Driver
        """ % MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop(MODULE, None)


def test_the_reference_driver_loads_through_the_entry_point(conf):
    driver = drivers.load("lxc", conf)
    assert type(driver) is lxc.LxcDriver and driver.conf is conf
    assert drivers.installed()["lxc"].value == "mec_conpaas.drivers.lxc:LxcDriver"


def test_a_registered_driver_loads_and_an_unknown_name_lists_them(conf, minimal):
    driver = drivers.load("minimal", conf)
    assert (driver.name, driver.features, driver.conf) == ("minimal", frozenset(), conf)
    with pytest.raises(exception.MecError) as e:
        drivers.load("nova-lxc", conf)
    assert e.value.message == (
        "unknown cloud driver 'nova-lxc' in [manager] driver: the installed ones "
        "are broken, lxc, minimal, openstack (registered under the mec_conpaas.drivers "
        "entry point)")
    with pytest.raises(exception.MecError) as e:
        drivers.load("broken", conf)
    assert e.value.message.startswith(
        "cloud driver 'broken' (mec_test_no_such_module:Driver) cannot be loaded: "
        "No module named 'mec_test_no_such_module'")


@pytest.fixture
def on_minimal(edge, store, minimal):  # noqa: F811
    """(admin, alice, manager) with the API's manager on ``minimal``."""
    admin, alice, _ = edge
    manager = Manager(store, drivers.load("minimal", store))
    flask_app = app_mod.create_app(manager)
    return Api(flask_app, admin.token), Api(flask_app, alice.token), manager


def test_operations_the_driver_cannot_do_are_refused_with_nothing_started(on_minimal):
    admin, alice, manager = on_minimal
    add_service("web", "alice", "ap-1", ["ap-1", "ap-2"])
    stopped = add_service("old", "alice", "ap-1", [], state="STOPPED", port=20010)
    os.makedirs(manager.cluster.saved_dir(stopped))
    with open(os.path.join(manager.cluster.saved_dir(stopped), "index.json"), "w") as f:
        json.dump([{"instance": "i", "role": "master", "node": "ap-1",
                    "file": "i.tar"}], f)
    before = snapshot()
    for method, path, kwargs, operation, missing in (
            ("POST", "/v1/services/web/migrate", {"json": {"to": "ap-3"}},
             "migrate", "freeze, state_copy"),
            ("POST", "/v1/services/web/stop", {}, "stop", "state_export"),
            ("POST", "/v1/services/old/start", {}, "start", "state_export"),
            ("GET", "/v1/services/web/logs", {}, "logs", "logs")):
        assert alice(method, path, **kwargs) == (409, {"error": {
            "code": "feature_not_supported",
            "message": "%s is not supported by this cloud's driver 'minimal': it "
                       "lacks the feature(s) %s; nothing was started (an admin "
                       "can choose another [manager] driver)" % (operation, missing)}})
    # A drain would migrate: the node stays enabled.
    status, body = admin("POST", "/v1/nodes/ap-2/drain")
    assert (status, body["error"]["code"]) == (409, "feature_not_supported")
    assert "drain is not supported" in body["error"]["message"]
    assert snapshot() == before and manager.engine.submitted == []
    # What it declares no feature for is accepted: an empty node drains,
    # and a service scales.
    assert admin("POST", "/v1/nodes/ap-3/drain")[0] == 200
    assert alice("POST", "/v1/services/web/scale", json={"count": 1})[0] == 202


def test_home_is_where_placement_puts_the_first_instance(edge):  # noqa: F811
    admin, alice, manager = edge
    add_service("busy", "alice", "ap-1", ["ap-1", "ap-1"])
    add_service("some", "alice", "ap-2", ["ap-2"], port=20010)
    # ap-3 only proxies: its node agent runs no containers.
    with db.session_scope() as s:
        s.get(models.Node, "ap-3").container_backend = "none"
    status, body = alice("POST", "/v1/services", data={"type": "web", "name": "new"})
    assert status == 202 and body["service"]["home_node"] == "ap-2"
    with db.session_scope() as s:
        assert s.scalar(select(models.Operation.params).where(
            models.Operation.service_name == "new")) == {"count": 1, "node": "ap-2"}
        # The create's first instance goes where the home is.
        assert manager.services.choose_home(s) == "ap-2"
        assert manager.cluster.free_slots(s) == 3
    status, body = alice("POST", "/v1/services", data={"type": "web", "name": "x",
                                                       "node": "ap-3"})
    assert (status, body["error"]["message"]) == (
        409, "node ap-3 does not run service instances: choose another node")
    status, body = alice("POST", "/v1/services/some/scale", json={"count": 5})
    assert status == 409 and "have 3 free slot(s)" in body["error"]["message"]


def test_nothing_outside_the_drivers_asks_which_driver_runs():
    """The API and the manager ask the driver (features, node_can_host),
    never compare its name or a node's container backend."""
    root = os.path.dirname(mec_conpaas.__file__)
    asks = re.compile(r"""(container_backend|driver(\.name)?|manager\.driver)\s*"""
                      r"""(==|!=|\bin\b)|["'](lxc|openstack|libvirt)["']\s*(==|!=)""")
    found = []
    for folder in ("api", "manager"):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            if name.endswith(".py"):
                with open(os.path.join(root, folder, name)) as f:
                    found += ["%s/%s:%d: %s" % (folder, name, n, line.strip())
                              for n, line in enumerate(f, 1) if asks.search(line)]
    assert found == []
    # The check would see the test this branch removed from the API.
    assert asks.search('if node.container_backend != "libvirt" and '
                       'conf.manager.driver == "lxc":')
