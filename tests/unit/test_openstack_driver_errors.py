"""The openstack driver when OpenStack cannot be reached: a clear PaaS error that
names the call and what to check, from the real openstacksdk against a port nothing
listens on (the deploy tests exercise the driver against a real cloud)."""
import socket

import pytest

from mec_conpaas import exception
from mec_conpaas.drivers import base
from mec_conpaas.drivers import nodeagent
from mec_conpaas.drivers import openstack as os_driver


@pytest.fixture
def unreachable(conf, monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"OS_AUTH_URL": "http://127.0.0.1:%d/v3" % port,
                        "OS_USERNAME": "mec", "OS_PASSWORD": "secret",
                        "OS_PROJECT_NAME": "mec", "OS_USER_DOMAIN_NAME": "Default",
                        "OS_PROJECT_DOMAIN_NAME": "Default"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OS_CLOUD", raising=False)
    conf.set_override("api_timeout", 5, "openstack")
    yield os_driver.OpenstackDriver(conf)
    conf.clear_override("api_timeout", "openstack")


def test_unreachable_keystone_is_a_clear_error(unreachable):
    with pytest.raises(exception.NodeError) as err:
        unreachable.inventory()
    assert err.value.message.startswith("listing compute services: OpenStack is unreachable")
    assert "[openstack] cloud" in err.value.message


def test_create_with_keystone_down_fails_before_anything_exists(unreachable):
    node = base.NodeRef("ap-1", nodeagent.NodeAgentClient("127.0.0.1", 9, "token"))
    spec = base.InstanceSpec(id="00000000-0000-0000-0000-000000000001", service_id="s",
                             service_name="web", service_type="web", bundle_sha256="0" * 64,
                             memory_mb=128, cpus=0.5)
    with pytest.raises(exception.NodeError) as err:
        unreachable.create_instance(node, spec)
    assert "listing servers: OpenStack is unreachable" in err.value.message


def test_each_thread_has_its_own_connection(unreachable):
    """A Connection is not thread-safe: the manager's threads must not share one."""
    import threading
    mine = unreachable.conn()
    assert unreachable.conn() is mine
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(unreachable.conn()))
    t.start()
    t.join()
    assert theirs[0] is not mine and theirs[0].session is not mine.session
