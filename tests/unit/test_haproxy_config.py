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
    "name": "shop", "port": 20001, "mode": "http", "near": [], "far": []},
    "9f00aa11-1111-2222-3333-444455556666": {
    "name": "raw", "port": 20002, "mode": "tcp", "near": [], "far": []}}


def test_config_validates_with_haproxy(conf):
    proxy = haproxy.HAProxy(conf)
    assert proxy.write_config(SERVICES) is True
    assert proxy.write_config(SERVICES) is False  # unchanged: no reload needed
    text = open(proxy.config_path).read()
    assert "bind :20001" in text and "bind :20002" in text
    assert "server-template far 8 0.0.0.0:8080 check port 8999 disabled backup" in text
    assert "retry-on conn-failure empty-response" in text
    res = subprocess.run(["haproxy", "-c", "-f", proxy.config_path],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
