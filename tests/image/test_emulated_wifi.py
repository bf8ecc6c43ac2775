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
configuration, so it holds whatever address first boot or the join gave the
AP), and fetches a page from the AP's address over the air; hostapd's control
interface reports the station's AP-STA-CONNECTED, the node agent (which first
boot pointed at that control interface) reports the station, and the manager
lists it as a user of this access point until it leaves.  Then the station
fetches the PaaS service the manager placed on the node
(conftest.paas_service) through the access point's endpoint on its
client-side address.  A wrong passphrase does not associate, and both sides'
logs say why.  Logs go to the artifacts directory on failure.

hostapd_cli's action script is in /var/tmp, not /run: Debian's initramfs
mounts /run ``noexec`` (and hands that mount to the system), so hostapd_cli
could not run a script there and recorded no event at all (session 8).
"""

import ipaddress
import json
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
EVENT_SCRIPT = "/var/tmp/mec-wifi-event.sh"  # not /run: noexec (see above)
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
                  f"> {EVENT_SCRIPT}\nchmod 755 {EVENT_SCRIPT}\n"
                  f": > {EVENTS}\n"
                  f"hostapd_cli -p /run/hostapd -i wlan0 -B -a {EVENT_SCRIPT}")
        yield g, ssh, time.monotonic() - t0
    finally:
        keep = {"hostapd.log": journal(ssh, "hostapd"),
                "hostapd-events.log": events(ssh),
                "dnsmasq.log": journal(ssh, "dnsmasq"),
                "station.log": sudo(ssh, "cat /run/mec-wifi-sta-*.log 2>/dev/null || true",
                                    check=False).stdout}
        g.keep("wifi", keep)
        sudo(ssh, f"{STOP_STATIONS}; ip netns del {NS} || true\n"
                  f"pkill -f '[h]ostapd_cli.*mec-wifi-event' || true; rm -f {EVENT_SCRIPT}",
             check=False)


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


def users_of(master, mac, present=True, timeout=60):
    """The manager's view of the Wi-Fi user ``mac`` (``/v1/users``, from the node
    agent's station reports) once it is there (or gone, ``present=False``)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = master.get("/v1/users", master.admin_token)
        assert status == 200, body
        found = [u for u in body["users"] if (u.get("mac") or "").lower() == mac]
        if bool(found) == present or time.monotonic() > deadline:
            return found, body["users"]
        time.sleep(2)


def test_station_associates_gets_lease_and_fetches_page(air, master):
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
    # The node agent follows the same control interface (first boot set
    # [node_agent] hostapd_ctrl_interface) and reports the station: the manager
    # lists it as a user of this access point, with the address it leased.
    conf = sudo(ssh, "cat /etc/mec-conpaas/mec-conpaas.conf").stdout
    assert re.search(r"^hostapd_ctrl_interface = /run/hostapd/wlan0$", conf, re.M), conf
    found, users = users_of(master, mac)
    assert found, (users, journal(ssh, "mec-conpaas-node-agent")[-3000:])
    assert found[0]["ap"] == "ap-test-1", found
    reported_s = time.monotonic() - t0
    g.timings.update({"wifi_setup_s": round(setup_s, 1),
                      "wifi_associated_s": round(associated_s, 1),
                      "wifi_leased_s": round(leased_s, 1),
                      "wifi_user_reported_s": round(reported_s, 1)})
    print(f"hwsim AP up {setup_s:.0f} s, associated {associated_s:.0f} s, "
          f"lease {got} after {leased_s:.0f} s")


def test_station_fetches_paas_service_through_ap_endpoint(air, master, paas_service):
    """The service the manager placed on this node, fetched by the Wi-Fi user
    through the access point's endpoint (HAProxy on the client-side address);
    then the station leaves and the manager stops listing it."""
    g, ssh, _ = air
    svc, node, _ = paas_service
    if sta_state(ssh) != "COMPLETED":
        pytest.fail("the station of the previous test is not associated: "
                    + sudo(ssh, "cat /run/mec-wifi-sta-good.log", check=False).stdout)
    net = client_subnet(ssh)
    url = f"http://{net.ip}:{svc['port']}/"
    fetched = sudo(ssh, f"ip netns exec {NS} python3 -c " + shlex.quote(
        "import urllib.request; print(urllib.request.urlopen("
        f"{url!r}, timeout=60).read().decode())"), timeout=180).stdout
    answer = json.loads(fetched)
    assert answer["service"] == svc["name"], answer
    assert answer["instance"] == svc["instances"][0]["address"], (answer, svc)
    g.timings["wifi_service_answered_after_poweron_s"] = round(time.monotonic() - g.t0, 1)
    # The user leaves: AP-STA-DISCONNECTED, and the node agent's next report drops it.
    mac = sudo(ssh, f"ip netns exec {NS} cat /sys/class/net/wlan1/address").stdout.strip()
    sudo(ssh, STOP_STATIONS)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and f"AP-STA-DISCONNECTED {mac}" not in events(ssh):
        time.sleep(2)
    assert f"AP-STA-DISCONNECTED {mac}" in events(ssh).splitlines(), events(ssh)
    found, users = users_of(master, mac, present=False)
    assert not found, users
