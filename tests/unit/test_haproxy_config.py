import contextlib
import os
import shutil
import socket
import subprocess
import time

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


# Every slot: its address set at run time, and kept across reloads
# (``init-addr last`` from the server-state file; see haproxy.SERVER).
SLOT = "unassigned.invalid:8080 init-addr last,0.0.0.0 check port 8999 disabled"


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
        assert "server-template near 8 %s maxconn 16" % SLOT in near \
            and "far" not in near
        assert "server-template far 8 %s maxconn 16\n" % SLOT in far + "\n"
        assert "use_backend bf_%s if far_up near_busy || far_up near_down" % key in text
        assert "acl near_busy queue(be_%s) gt 0" % key in text


def test_backup_tier_is_the_old_single_backend(conf):
    text = haproxy.HAProxy(conf).render(SERVICES)
    near = backend(text, "be_77aa00111111")
    assert "server-template far 8 %s backup" % SLOT in near
    assert "maxconn" not in near
    assert "bf_77aa00111111" not in text


# A real HAProxy, in a network namespace of its own (nothing binds on the host).
needs_haproxy = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("haproxy"),
                                   reason="needs root (its own network namespace) "
                                          "and haproxy")


def master_listens(path):
    with socket.socket(socket.AF_UNIX) as s:
        return s.connect_ex(path) == 0


@contextlib.contextmanager
def serving(proxy):
    """HAProxy (master-worker, as the edge starts it) on ``proxy``'s config,
    in its own network namespace (its frontends bind nothing on the host),
    once its worker and master answer; yields the master's process."""
    proc = subprocess.Popen(["unshare", "-n", "haproxy", "-W", "-f", proxy.config_path,
                             "-S", proxy.master_socket],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (proxy.alive() and master_listens(proxy.master_socket)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


@needs_haproxy
def test_reload_keeps_every_slots_address_and_state(conf):
    """A reload for a new service: the new worker starts with the other
    services' slots as they were (address, ready or drain), before the
    agent says anything.  With IP-literal slots it started them at
    0.0.0.0 and answered 503 until the agent set them again."""
    proxy = haproxy.HAProxy(conf)
    sid, new = "0b7e3a9c-1111-2222-3333-444455556666", "9f00aa11-1111-2222-3333-444455556666"
    one = {sid: dict(SERVICES[sid], near=[{"addr": "10.9.0.5"}, {"addr": "10.9.0.6"}])}
    proxy.write_config(one)
    with serving(proxy):
        proxy.apply(one)
        proxy.apply({sid: dict(one[sid], near=[{"addr": "10.9.0.5"}],
                               draining=[{"addr": "10.9.0.6"}])})
        before = proxy._slots("be_0b7e3a9c1111")
        both = {sid: one[sid], new: SERVICES[new]}
        assert proxy.write_config(both)
        proxy.reload(both)  # no apply: only what the new worker started with
        after = proxy._slots("be_0b7e3a9c1111")
        assert after == before
        assert after["near1"] == ("10.9.0.5", 4)  # ready (config's disabled undone)
        assert after["near2"] == ("10.9.0.6", 4 | 8)  # draining
        assert not os.path.exists(proxy.state_path)


def test_request_log_validates_and_carries_the_timers(conf):
    """``proxy_request_log``: HTTP frontends log the timers, termination
    state, queue positions and the server's address; TCP ones the TCP log."""
    conf.set_override("proxy_request_log", True, group="node_agent")
    try:
        proxy = haproxy.HAProxy(conf)
        proxy.write_config(SERVICES)
    finally:
        conf.clear_override("proxy_request_log", group="node_agent")
    text = open(proxy.config_path).read()
    assert "log stdout format raw local0" in text
    http_fe = text.split("frontend fe_0b7e3a9c1111\n")[1].split("\nbackend ")[0]
    tcp_fe = text.split("frontend fe_9f00aa111111\n")[1].split("\nbackend ")[0]
    assert "%TR/%Tw/%Tc/%Tr/%Ta %ST %B %tsc" in http_fe and "%si:%sp" in http_fe
    assert "option tcplog" in tcp_fe and "log-format" not in tcp_fe
    res = subprocess.run(["haproxy", "-c", "-f", proxy.config_path],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# -- a node agent restarted while HAProxy runs ---------------------------------
# What its predecessor left in HAProxy goes with the first plan, even an
# empty one: a new ``haproxy.HAProxy`` as a restarted agent makes it (the
# empty config written at start, ``NodeAgent.serve``), then the manager's
# plan.  test_chaos found ports of deleted services still listened on after
# such a restart.
SVC = {"mode": "http", "near": [], "far": [], "maxconn": 16, "far_tier": "spill"}
ONE = {"0b7e3a9c-1111-2222-3333-444455556666": dict(SVC, name="one", port=20000)}
TWO = {"9f00aa11-1111-2222-3333-444455556666": dict(SVC, name="two", port=20002)}


@pytest.fixture
def running(conf):
    """An HAProxy serving ONE and TWO, as the killed agent left it; its pid."""
    first = haproxy.HAProxy(conf)
    first.write_config({})
    with serving(first) as proc:
        first.apply(dict(ONE, **TWO))
        assert listening(proc.pid) == {20000, 20002}
        yield proc.pid


def listening(pid):
    """TCP ports listened on in the HAProxy's network namespace."""
    out = subprocess.run(["nsenter", "--net=/proc/%d/ns/net" % pid, "ss", "-Hltn"],
                         capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()}


def restarted(conf):
    """The HAProxy object of a node agent that just started (serve())."""
    proxy = haproxy.HAProxy(conf)
    proxy.start()
    return proxy


@needs_haproxy
def test_an_empty_first_plan_removes_what_the_predecessor_served(conf, running):
    # Killed mid-reload, it left the servers' saved states behind too.
    first = haproxy.HAProxy(conf)
    with open(first.state_path, "w") as f:
        f.write(first._send(first.admin_socket, "show servers state"))
    proxy = restarted(conf)
    assert not os.path.exists(proxy.state_path)
    proxy.apply({})
    assert listening(running) == set()
    assert proxy.status() == {}


@needs_haproxy
def test_the_first_plan_reloads_once_then_unchanged_plans_do_not(conf, running):
    proxy = restarted(conf)
    worker = proxy._worker_pid()
    proxy.apply(ONE)
    assert listening(running) == {20000}
    reloaded = proxy._worker_pid()
    assert reloaded != worker
    # A migration's switch (the same services, other servers) is no reload.
    proxy.apply({sid: dict(svc, near=[{"addr": "10.9.0.5"}])
                 for sid, svc in ONE.items()})
    assert proxy._worker_pid() == reloaded
