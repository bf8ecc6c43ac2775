"""The node agent's station sources against real peers: a real hostapd
(``driver=wired``, IEEE 802.1X with its own EAP server) that a real
wpa_supplicant authenticates to over a veth pair, which is how hostapd
emits AP-STA-CONNECTED without a radio; and a real bridge in a network
namespace for the embedded edge's emulated users."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from mec_conpaas.agents.node import stations

ROOT_AND = (os.geteuid() != 0, "needs root (network namespaces)")


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_event_and_sta_parsing():
    assert stations.parse_event(b"<3>AP-STA-CONNECTED 02:AA:00:00:00:01") == \
        ("AP-STA-CONNECTED", "02:aa:00:00:00:01")
    assert stations.parse_event(b"<3>AP-STA-DISCONNECTED 02:aa:00:00:00:01 x=1") == \
        ("AP-STA-DISCONNECTED", "02:aa:00:00:00:01")
    assert stations.parse_event(b"<3>CTRL-EVENT-EAP-STARTED 02:aa:00:00:00:01") is None
    assert stations.parse_sta("FAIL\n") is None and stations.parse_sta("") is None
    mac, fields = stations.parse_sta("02:aa:00:00:00:01\nflags=[AUTHORIZED]\nsignal=-41\n")
    assert mac == "02:aa:00:00:00:01" and stations._signal(fields) == -41
    assert stations.parse_alias("user=alice mac=02:aa ip=10.0.0.9") == {
        "user": "alice", "mac": "02:aa", "ip": "10.0.0.9"}
    assert stations.parse_alias("something else") is None


@pytest.fixture
def netns_pair():
    ap, sta = "usrt-ap-%d" % os.getpid(), "usrt-sta-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", ap], check=True)
    subprocess.run(["ip", "netns", "add", sta], check=True)
    try:
        subprocess.run(["ip", "link", "add", "hveth0", "netns", ap, "type", "veth",
                        "peer", "name", "sveth0", "netns", sta], check=True)
        subprocess.run(["ip", "-n", ap, "link", "set", "hveth0", "up"], check=True)
        subprocess.run(["ip", "-n", sta, "link", "set", "sveth0", "up"], check=True)
        yield ap, sta
    finally:
        subprocess.run(["ip", "netns", "del", ap])
        subprocess.run(["ip", "netns", "del", sta])


@pytest.mark.skipif(ROOT_AND[0] or not shutil.which("hostapd")
                    or not shutil.which("wpa_supplicant"),
                    reason="needs root, hostapd and wpa_supplicant")
def test_follower_tracks_a_real_hostapd(netns_pair, tmp_path):
    ap, sta = netns_pair
    ctrl_dir = tmp_path / "ctrl"
    (tmp_path / "eap_users").write_text('"alice" MD5 "secret"\n')
    (tmp_path / "hostapd.conf").write_text(
        "interface=hveth0\ndriver=wired\nctrl_interface=%s\nieee8021x=1\n"
        "eap_server=1\neap_user_file=%s\neapol_version=2\n" % (
            ctrl_dir, tmp_path / "eap_users"))
    (tmp_path / "wpa.conf").write_text(
        'ctrl_interface=%s\nap_scan=0\nnetwork={\n key_mgmt=IEEE8021X\n eap=MD5\n'
        ' identity="alice"\n'
        ' password="secret"\n eapol_flags=0\n}\n' % (tmp_path / "wctrl"))
    mac = subprocess.run(
        ["ip", "-n", sta, "-br", "link", "show", "sveth0"], capture_output=True,
        text=True, check=True).stdout.split()[2].lower()
    changes = []
    table = stations.Table(lambda: changes.append(time.monotonic()))
    # The follower starts before hostapd, as an agent may on boot.
    follower = stations.HostapdFollower(str(ctrl_dir / "hveth0"), table,
                                        retry=0.2).start()
    hostapd = subprocess.Popen(["ip", "netns", "exec", ap, "hostapd",
                                str(tmp_path / "hostapd.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    supplicant = None
    try:
        assert follower.connected.wait(15), "never attached to hostapd"
        assert table.snapshot() == []
        supplicant = subprocess.Popen(["ip", "netns", "exec", sta, "wpa_supplicant",
                                       "-Dwired", "-i", "sveth0", "-c",
                                       str(tmp_path / "wpa.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: [s["mac"] for s in table.snapshot()] == [mac])
        view = table.snapshot()[0]
        assert view["user"] == mac and abs(view["since"] - time.time()) < 15
        # Its address comes from the neighbour table once it sent over IP.
        subprocess.run(["ip", "-n", ap, "addr", "add", "10.97.0.1/24", "dev", "hveth0"],
                       check=True)
        subprocess.run(["ip", "-n", sta, "addr", "add", "10.97.0.2/24", "dev", "sveth0"],
                       check=True)
        subprocess.run(["ip", "netns", "exec", sta, "ping", "-c1", "-W2", "10.97.0.1"],
                       capture_output=True)
        snap = subprocess.run(["ip", "netns", "exec", ap, sys.executable, "-c",
                               "import json\nfrom mec_conpaas.agents.node import stations\n"
                               "print(json.dumps(stations.neighbours()))"],
                              capture_output=True, text=True, check=True)
        assert json.loads(snap.stdout) == {mac: "10.97.0.2"}
        # The user logs off (EAPOL-Logoff): the station goes.
        subprocess.run(["ip", "netns", "exec", sta, "wpa_cli", "-p",
                        str(tmp_path / "wctrl"), "logoff"], check=True,
                       capture_output=True)
        assert wait_for(lambda: table.snapshot() == [])
        assert len(changes) == 2
        # It logs on again while hostapd restarts: the follower reconnects
        # and its sweep finds the station.
        hostapd.terminate()
        hostapd.wait(10)
        subprocess.run(["ip", "netns", "exec", sta, "wpa_cli", "-p",
                        str(tmp_path / "wctrl"), "logon"], check=True,
                       capture_output=True)
        hostapd = subprocess.Popen(["ip", "netns", "exec", ap, "hostapd",
                                    str(tmp_path / "hostapd.conf")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: [s["mac"] for s in table.snapshot()] == [mac])
    finally:
        follower.stop.set()
        for p in (supplicant, hostapd):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(10)


@pytest.mark.skipif(ROOT_AND[0], reason=ROOT_AND[1])
def test_emulated_users_are_the_client_bridge_ports(tmp_path):
    ns = "usrt-br-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def ip(*args):
            subprocess.run(["ip", "-n", ns] + list(args), check=True)
        ip("link", "add", "wifi0", "type", "bridge")
        ip("link", "set", "wifi0", "up")
        ip("link", "add", "u-alice", "type", "veth", "peer", "name", "p-alice")
        ip("link", "set", "u-alice", "alias", "user=alice mac=02:aa:00:00:00:01 "
           "ip=10.242.1.10")
        ip("link", "set", "u-alice", "master", "wifi0", "up")
        ip("link", "set", "p-alice", "up")
        table = stations.Table()
        # As the agent, which runs inside the AP's namespace, sees it.
        source = stations.EmulatedStations("wifi0", table, ip=("ip", "-n", ns))
        source.poll()
        first = table.snapshot()
        ip("link", "set", "u-alice", "nomaster")
        source.poll()
        second = table.snapshot()
        assert [(s["user"], s["mac"], s["address"]) for s in first] == [
            ("alice", "02:aa:00:00:00:01", "10.242.1.10")]
        assert second == []
        # Running: a port enslaved is seen at once (ip monitor), not at the
        # next periodic listing.
        changes = []
        live = stations.EmulatedStations("wifi0", stations.Table(
            lambda: changes.append(1)), interval=60, ip=("ip", "-n", ns)).start()
        try:
            time.sleep(0.5)
            ip("link", "set", "u-alice", "master", "wifi0")
            assert wait_for(lambda: [s["user"] for s in live.table.snapshot()] ==
                            ["alice"], timeout=5)
        finally:
            live.stop.set()
            live.changed.set()
    finally:
        subprocess.run(["ip", "netns", "del", ns])


@pytest.mark.skipif(ROOT_AND[0] or not shutil.which("haproxy"),
                    reason="needs root (its own network namespace) and haproxy")
def test_service_report_names_the_users_that_sent(tmp_path):
    """A real HAProxy with the agent's config: a client's address shows in
    the service's users (the frontend's stick table), with its idle time."""
    from mec_conpaas import conf as conf_mod
    from mec_conpaas.agents.node import haproxy
    from mec_conpaas.agents.node import metrics
    conf = conf_mod.parse_args([])
    conf.set_override("state_path", str(tmp_path))
    conf.set_override("run_path", str(tmp_path / "run"))
    ns = "usrt-hp-%d" % os.getpid()
    sid = "0b7e3a9c-1111-2222-3333-444455556666"
    services = {sid: {"name": "shop", "port": 20001, "mode": "http", "near": [],
                      "far": [], "maxconn": 16, "far_tier": "spill"}}
    proxy = haproxy.HAProxy(conf)
    proxy.write_config(services)
    proxy.services = services
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "haproxy", "-W", "-f",
                                 proxy.config_path], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        assert wait_for(proxy.alive, timeout=10)
        subprocess.run(["ip", "netns", "exec", ns, "python3", "-c",
                        "import urllib.request as u\ntry: u.urlopen("
                        "'http://127.0.0.1:20001/', timeout=3)\nexcept Exception: pass"],
                       check=True)
        report = stations.service_report(proxy, metrics.proxy_stats(proxy))[sid]
        assert report["name"] == "shop" and report["requests"] >= 1
        assert list(report["users"]) == ["127.0.0.1"]
        assert 0 <= report["users"]["127.0.0.1"] < 5
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        subprocess.run(["ip", "netns", "del", ns])
        conf.clear_override("state_path")
        conf.clear_override("run_path")
