"""A node agent restarted while HAProxy runs: what its predecessor left in
HAProxy goes with the first plan, even an empty one.

A real HAProxy (master-worker, in its own network namespace: nothing binds
on the host) serving two services, then a new ``haproxy.HAProxy`` as a
restarted agent makes it: the empty config written at start
(``NodeAgent.serve``), then the manager's plan.  test_chaos found ports of
deleted services still listened on after such a restart (seed 1290481933).
"""
import os
import shutil
import subprocess
import time

import pytest

from mec_conpaas import conf as conf_mod
from mec_conpaas.agents.node import haproxy

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("haproxy"),
                                reason="needs root (its own network namespace) "
                                       "and haproxy")

SVC = {"mode": "http", "near": [], "far": [], "maxconn": 16, "far_tier": "spill"}
ONE = {"0b7e3a9c-1111-2222-3333-444455556666": dict(SVC, name="one", port=20000)}
TWO = {"9f00aa11-1111-2222-3333-444455556666": dict(SVC, name="two", port=20002)}


@pytest.fixture
def conf(tmp_path):
    c = conf_mod.parse_args([])
    c.set_override("state_path", str(tmp_path))
    c.set_override("run_path", str(tmp_path / "run"))
    yield c
    c.clear_override("state_path")
    c.clear_override("run_path")


@pytest.fixture
def running(conf):
    """An HAProxy serving ONE and TWO, as the killed agent left it; its pid."""
    first = haproxy.HAProxy(conf)
    first.write_config({})
    proc = subprocess.Popen(["unshare", "-n", "haproxy", "-W", "-f", first.config_path,
                             "-S", first.master_socket],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (first.alive() and os.path.exists(first.master_socket)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        first.apply(dict(ONE, **TWO))
        assert listening(proc.pid) == {20000, 20002}
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


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
