import subprocess

import pytest

from mec_conpaas import conf as conf_mod
from mec_conpaas.agents.node import haproxy


@pytest.fixture
def conf(tmp_path):
    c = conf_mod.parse_args([])
    c.set_override("state_path", str(tmp_path))
    c.set_override("run_path", str(tmp_path / "run"))
    yield c
    c.clear_override("state_path")
    c.clear_override("run_path")


SERVICES = {"0b7e3a9c-1111-2222-3333-444455556666": {
    "name": "shop", "port": 20001, "mode": "http", "near": [], "far": [],
    "maxconn": 16, "far_tier": "spill"},
    "9f00aa11-1111-2222-3333-444455556666": {
    "name": "raw", "port": 20002, "mode": "tcp", "near": [], "far": [],
    "maxconn": 16, "far_tier": "spill"},
    "77aa0011-1111-2222-3333-444455556666": {
    "name": "old", "port": 20003, "mode": "http", "near": [], "far": [],
    "maxconn": 0, "far_tier": "backup"}}


def backend(text, name):
    return text.split("\nbackend " + name + "\n")[1].split("\n\n")[0]


def test_config_validates_with_haproxy(conf):
    proxy = haproxy.HAProxy(conf)
    assert proxy.write_config(SERVICES) is True
    assert proxy.write_config(SERVICES) is False  # unchanged: no reload needed
    text = open(proxy.config_path).read()
    assert "bind :20001" in text and "bind :20002" in text
    assert "retry-on conn-failure empty-response" in text
    res = subprocess.run(["haproxy", "-c", "-f", proxy.config_path],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_spill_tier_is_a_second_backend_behind_the_near_ones_queue(conf):
    text = haproxy.HAProxy(conf).render(SERVICES)
    for key in ("0b7e3a9c1111", "9f00aa111111"):  # http and tcp alike
        near, far = backend(text, "be_" + key), backend(text, "bf_" + key)
        assert "server-template near 8 0.0.0.0:8080 check port 8999 disabled " \
            "maxconn 16" in near and "far" not in near
        assert "server-template far 8 0.0.0.0:8080 check port 8999 disabled " \
            "maxconn 16\n" in far + "\n"
        assert "use_backend bf_%s if far_up near_busy || far_up near_down" % key in text
        assert "acl near_busy queue(be_%s) gt 0" % key in text


def test_backup_tier_is_the_old_single_backend(conf):
    text = haproxy.HAProxy(conf).render(SERVICES)
    near = backend(text, "be_77aa00111111")
    assert "server-template far 8 0.0.0.0:8080 check port 8999 disabled backup" in near
    assert "maxconn" not in near
    assert "bf_77aa00111111" not in text
