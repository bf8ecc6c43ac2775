"""Wi-Fi on simulated air, in the emulated boot of the image (issue 11).

This machine's kernel has no wireless stack, but the image's arm64 Debian
kernel ships mac80211_hwsim: inside the 'good' guest it is loaded with two
radios.  The image's own hostapd, with the configuration first boot wrote from
the settings file, serves the first radio (wlan0, the AP interface the image is
built for); a wpa_supplicant station on the second radio, moved into its own
network namespace, is the client.  Real 802.11 association and a WPA2
four-way handshake happen between them, then DHCP from the image's dnsmasq.

Checked: the station associates with the settings file's SSID and passphrase,
gets a lease in the node's client subnet (read from the node's own wlan0
configuration, so it holds whatever address first boot or enrollment gave the
AP), and fetches a page from the AP's address over the air; hostapd logs the
station's AP-STA-CONNECTED.  A wrong passphrase does not associate, and both
sides' logs say why.  Logs go to the artifacts directory on failure.
"""

import ipaddress
import re
import shlex
import time

import pytest
from imagelib import needs_role

pytestmark = pytest.mark.emulated_boot

SSID = "MEC-ConPaaS test"          # imagelib.settings()
PASSPHRASE = "not a real passphrase"
NS = "mec-wifi-sta"
STA_CTRL = "/run/mec-wifi-test"
EVENTS = "/run/mec-wifi-events.log"
# The test's stations, by their pid files.  Not ``pkill -f 'wpa_supplicant.*NS'``:
# the script that starts the next station names both in its own command line, so
# that pattern killed the shell running it (ssh -> 255, the first image runs).
STOP_STATIONS = ("for p in /run/mec-wifi-sta-*.pid; do if [ -f \"$p\" ]; then "
                 "kill \"$(cat \"$p\")\" 2>/dev/null || true; rm -f \"$p\"; fi; done")


def sudo(ssh, script, check=True, timeout=180):
    return ssh.run("sudo sh -c " + shlex.quote("set -e\n" + script), check=check,
                   timeout=timeout)


def wpa_conf(passphrase):
    return (f"ctrl_interface={STA_CTRL}\n"
            "network={\n"
            f'    ssid="{SSID}"\n'
            f'    psk="{passphrase}"\n'
            "    key_mgmt=WPA-PSK\n"
            "    scan_ssid=1\n"
            "}\n")


@pytest.fixture(scope="module")
def air(image, booted):
    """Two simulated radios: the AP's hostapd on wlan0, wlan1 in a station netns."""
    needs_role(image, "wifi_ap")
    g, ssh = booted
    t0 = time.monotonic()
    sudo(ssh, "modprobe mac80211_hwsim radios=2\n"
              "for i in $(seq 60); do [ -e /sys/class/net/wlan1 ] && break; sleep 1; done\n"
              f"ip netns add {NS}\n"
              f"iw phy $(cat /sys/class/net/wlan1/phy80211/name) set netns name {NS}\n"
              f"ip netns exec {NS} ip link set lo up\n"
              "systemctl restart hostapd\n")
    # wlan0's address comes from the image's ifupdown stanza (allow-hotplug): on a Pi
    # at boot, here when the radio appears.  If hotplug did not bring it up, say so.
    how = sudo(ssh, "for i in $(seq 60); do ip -4 -o addr show dev wlan0 | grep -q inet "
                    "&& { echo hotplug; exit 0; }; sleep 1; done; ifup wlan0 && echo ifup",
               timeout=240).stdout.strip()
    g.timings["wlan0_address_by"] = how
    deadline = time.monotonic() + 180
    status = ""
    while time.monotonic() < deadline:
        status = sudo(ssh, "hostapd_cli -p /run/hostapd -i wlan0 status", check=False).stdout
        if "state=ENABLED" in status:
            break
        time.sleep(3)
    try:
        assert "state=ENABLED" in status, (status, journal(ssh, "hostapd"))
        # hostapd's control-interface events (what a follower such as the node
        # agent's sees), one line each: EVENT MAC.
        sudo(ssh, f"printf '%s\\n' '#!/bin/sh' 'echo \"$2 $3\" >> {EVENTS}' "
                  "> /run/mec-wifi-event.sh\nchmod 755 /run/mec-wifi-event.sh\n"
                  f": > {EVENTS}\n"
                  "hostapd_cli -p /run/hostapd -i wlan0 -B -a /run/mec-wifi-event.sh")
        yield g, ssh, time.monotonic() - t0
    finally:
        keep = {"hostapd.log": journal(ssh, "hostapd"),
                "hostapd-events.log": events(ssh),
                "dnsmasq.log": journal(ssh, "dnsmasq"),
                "station.log": sudo(ssh, "cat /run/mec-wifi-sta-*.log 2>/dev/null || true",
                                    check=False).stdout}
        g.keep("wifi", keep)
        sudo(ssh, f"{STOP_STATIONS}; ip netns del {NS} || true\n"
                  "pkill -f '[h]ostapd_cli.*mec-wifi-event' || true", check=False)


def events(ssh):
    return sudo(ssh, f"cat {EVENTS} 2>/dev/null || true", check=False).stdout


def journal(ssh, unit):
    return ssh.run(f"sudo journalctl -b -u {unit} --no-pager", check=False).stdout


def station(ssh, name, passphrase):
    """Start a wpa_supplicant station in the netns; its log path."""
    conf, log = f"/run/mec-wifi-sta-{name}.conf", f"/run/mec-wifi-sta-{name}.log"
    sudo(ssh, f"{STOP_STATIONS}; sleep 1\n"
              f"mkdir -p {STA_CTRL}\n"
              f"printf %s {shlex.quote(wpa_conf(passphrase))} > {conf}\n"
              f"ip netns exec {NS} wpa_supplicant -B -i wlan1 -c {conf} -f {log} "
              f"-P /run/mec-wifi-sta-{name}.pid -D nl80211\n")
    return log


def sta_state(ssh):
    out = sudo(ssh, f"wpa_cli -p {STA_CTRL} -i wlan1 status", check=False).stdout
    m = re.search(r"^wpa_state=(\S+)", out, re.M)
    return m.group(1) if m else out.strip()


def client_subnet(ssh):
    """The AP's client network, from the node's own wlan0 configuration."""
    text = sudo(ssh, "cat /etc/network/interfaces.d/wlan0").stdout
    m = re.search(r"^\s*address\s+(\S+/\d+)", text, re.M)
    assert m, text
    return ipaddress.ip_interface(m.group(1))


def test_wrong_passphrase_does_not_associate(air):
    g, ssh, _ = air
    log = station(ssh, "wrong", "a wrong passphrase, not the AP's")
    deadline = time.monotonic() + 90
    text = ""
    while time.monotonic() < deadline:
        text = sudo(ssh, f"cat {log}", check=False).stdout
        if "WRONG_KEY" in text:
            break
        time.sleep(3)
    assert "reason=WRONG_KEY" in text, text
    assert sta_state(ssh) != "COMPLETED"
    # The AP's side says so too.
    assert "AP-STA-POSSIBLE-PSK-MISMATCH" in events(ssh), (events(ssh), journal(ssh, "hostapd"))


def test_station_associates_gets_lease_and_fetches_page(air):
    g, ssh, setup_s = air
    net = client_subnet(ssh)
    t0 = time.monotonic()
    station(ssh, "good", PASSPHRASE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sta_state(ssh) != "COMPLETED":
        time.sleep(2)
    assert sta_state(ssh) == "COMPLETED", sudo(ssh, "cat /run/mec-wifi-sta-good.log").stdout
    associated_s = time.monotonic() - t0
    status = sudo(ssh, f"wpa_cli -p {STA_CTRL} -i wlan1 status").stdout
    assert f"ssid={SSID}" in status.splitlines(), status
    # DHCP from the image's dnsmasq (klibc's ipconfig: in every Debian initramfs-tools).
    lease = sudo(ssh, f"ip netns exec {NS} /usr/lib/klibc/bin/ipconfig -t 60 -c dhcp -d wlan1",
                 timeout=240).stdout
    addr = sudo(ssh, f"ip netns exec {NS} ip -4 -o addr show dev wlan1").stdout
    m = re.search(r"inet (\S+)", addr)
    assert m, (lease, addr)
    got = ipaddress.ip_interface(m.group(1))
    assert got.ip in net.network and got.ip != net.ip, (got, net)
    leased_s = time.monotonic() - t0
    # A page from the AP's address, over the air (the station's only link).
    page = f"mec-conpaas wifi test {time.time_ns()}"
    sudo(ssh, f"mkdir -p /run/mec-wifi-www && echo {shlex.quote(page)} > "
              f"/run/mec-wifi-www/index.html\n"
              f"nohup python3 -m http.server 8089 --bind {net.ip} "
              f"--directory /run/mec-wifi-www >/dev/null 2>&1 &\nsleep 3")
    try:
        fetched = sudo(ssh, f"ip netns exec {NS} python3 -c "
                            + shlex.quote("import urllib.request,sys; print(urllib.request."
                                          f"urlopen('http://{net.ip}:8089/', timeout=30)"
                                          ".read().decode())"), timeout=120).stdout
    finally:
        sudo(ssh, "pkill -f '[h]ttp.server 8089' || true", check=False)
    assert page in fetched
    # hostapd saw the station (the event the node agent's mobility work follows).
    mac = sudo(ssh, f"ip netns exec {NS} cat /sys/class/net/wlan1/address").stdout.strip()
    assert f"AP-STA-CONNECTED {mac}" in events(ssh).splitlines(), events(ssh)
    g.timings.update({"wifi_setup_s": round(setup_s, 1),
                      "wifi_associated_s": round(associated_s, 1),
                      "wifi_leased_s": round(leased_s, 1)})
    print(f"hwsim AP up {setup_s:.0f} s, associated {associated_s:.0f} s, "
          f"lease {got} after {leased_s:.0f} s")
