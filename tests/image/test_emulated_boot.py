"""Emulated boot of a built image (issue 4): qemu-system-aarch64 -M virt
-cpu cortex-a53 -m 1024 with the image's own kernel, initrd and kernel command
line (root=PARTUUID=..., cgroup_enable=memory; only the console is changed).

The image is copied and enlarged by 1 GiB (a card bigger than the image), a
settings file is put on its FAT boot partition with mtools, and the node is
reached over SSH through qemu user networking forwarded to 127.0.0.1, logging
in with the key from that file: the login itself checks that the key was
installed, that host keys were generated and that sshd runs.  The real
manager (mec-conpaas-manager from this checkout) listens on 127.0.0.1 (the
guest sees it as 10.0.2.2): the node agent registers with it and first boot's
enrollment fetches the OpenStack service passwords from it.

Select with -m emulated_boot; MEC_CONPAAS_BOOT_TIMEOUT (s, default 900) bounds
each boot.  Console logs are kept in MEC_CONPAAS_ARTIFACTS if set.
"""

import hashlib
import ipaddress
import json
import re
import socket
import ssl
import time

import pytest
from imagelib import GROW_MIB
from imagelib import LOGIN_PROMPT
from imagelib import MIB
from imagelib import SSH
from imagelib import guest
from imagelib import roles_in

pytestmark = pytest.mark.emulated_boot

def test_floor_boot_to_ssh(fleet, keypair):
    """bench/join.py's floor, booted beside the image under test (same run, same
    machine load): the bare image (MEC_CONPAAS_FLOOR_IMAGE, no node software)
    from power-on to an SSH login and to its boot finished.  Stopped at once,
    so that it takes no more CPU from the guest under test."""
    g = guest(fleet, "floor")
    try:
        SSH(g, keypair[0]).wait_boot_finished()
    finally:
        g.stop()
    print(f"floor: SSH {g.timings['ssh_s']} s, boot finished "
          f"{g.timings.get('boot_finished_s')} s after power-on")


def test_reaches_multi_user(booted):
    g, ssh = booted
    assert ssh.run("systemctl is-active multi-user.target").stdout.strip() == "active"
    state = ssh.run("systemctl is-system-running", check=False).stdout.strip()
    failed = ssh.run("systemctl --failed --no-legend --plain", check=False).stdout
    assert state in ("running", "degraded"), state
    for unit in ("mec-conpaas-growroot.service", "mec-conpaas-ssh-hostkeys.service",
                 "mec-conpaas-firstboot.service", "ssh.service"):
        assert unit not in failed, failed
        props = ssh.run(f"systemctl show -p ActiveState -p Result {unit}").stdout
        assert "ActiveState=active" in props and "Result=success" in props, (unit, props)
    # Kernel messages may follow the prompt on the same console line.
    assert re.search(LOGIN_PROMPT, g.console_text(), re.M), "no login prompt on the console"


def test_first_boot_grew_root_keeping_alignment(image, booted):
    g, ssh = booted
    table = json.loads(ssh.run("sudo sfdisk -J /dev/vda").stdout)["partitiontable"]
    disk_bytes = int(ssh.run("sudo blockdev --getsize64 /dev/vda").stdout)
    assert disk_bytes == g.orig_bytes + GROW_MIB * MIB
    root = [p for p in table["partitions"] if p["node"] == "/dev/vda2"][0]
    start, size = root["start"] * 512, root["size"] * 512
    assert start == image.offset(2)
    assert start % (4 * MIB) == 0 and size % (4 * MIB) == 0
    assert disk_bytes - (start + size) < 4 * MIB, "partition not grown to the card"
    assert size >= image.size(2) + GROW_MIB * MIB - 4 * MIB
    # The ext4 filesystem fills the grown partition (df's size is smaller by the
    # filesystem's own overhead, which grows with its size: compare block counts).
    info = ssh.run("sudo dumpe2fs -h /dev/vda2 2>/dev/null").stdout
    fs_bytes = (int(re.search(r"^Block count:\s+(\d+)", info, re.M).group(1))
                * int(re.search(r"^Block size:\s+(\d+)", info, re.M).group(1)))
    assert size - fs_bytes < 4 * MIB, f"filesystem not grown: {fs_bytes} of {size} bytes"
    journal = ssh.run("sudo journalctl -b -u mec-conpaas-growroot --no-pager").stdout
    assert "grown from" in journal


def test_swappiness_applied(image, booted):
    g, ssh = booted
    value = ssh.run("cat /proc/sys/vm/swappiness").stdout.strip()
    if "edge_tuning" not in roles_in(image):
        pytest.skip(f"profile without edge_tuning; swappiness is {value}")
    assert value == "100"


def test_kernel_command_line(image, booted):
    g, ssh = booted
    cmdline = ssh.run("cat /proc/cmdline").stdout.split()
    assert f"root=PARTUUID={image.partuuid(2)}" in cmdline
    assert "cgroup_enable=memory" in cmdline
    assert "memory" in ssh.run("cat /proc/cgroups").stdout
    # cgroup v1 hierarchies (image-vars.yml): the node agent freezes and limits
    # instances through the freezer and pids controllers.
    assert "systemd.unified_cgroup_hierarchy=0" in cmdline
    for controller in ("freezer", "pids", "memory"):
        assert ssh.run(f"test -d /sys/fs/cgroup/{controller}", check=False).returncode == 0, \
            ssh.run("ls /sys/fs/cgroup; findmnt -t cgroup,cgroup2", check=False).stdout
    # The legacy layout, not systemd's hybrid one: systemd tracks processes in
    # name=systemd (v1), where libvirt moves its LXC controller, so machined
    # knows the containers (with a cgroup2 "unified" mount every start failed:
    # NoMachineForPID).
    assert "systemd.legacy_systemd_cgroup_controller=1" in cmdline
    assert not ssh.run("findmnt -rn -t cgroup2", check=False).stdout.strip(), \
        ssh.run("findmnt -t cgroup,cgroup2", check=False).stdout
    mounts = ssh.run("findmnt -no SOURCE,FSTYPE /boot/firmware").stdout.split()
    assert mounts == ["/dev/vda1", "vfat"], mounts


def test_settings_file_applied(booted, master):
    g, ssh = booted
    assert ssh.run("hostname").stdout.strip() == "ap-test-1"
    assert ssh.run("cat /etc/hostname").stdout.strip() == "ap-test-1"
    hostapd = ssh.run("sudo cat /etc/hostapd/hostapd.conf").stdout
    assert "ssid=MEC-ConPaaS test" in hostapd.splitlines()
    assert "wpa_passphrase=not a real passphrase" in hostapd.splitlines()
    assert "country_code=NL" in hostapd.splitlines()
    net = ssh.run("cat /etc/systemd/network/10-mec-conpaas-backbone.network").stdout
    assert "Name=eth0" in net and "DHCP=yes" in net
    assert ssh.run("sudo test -f /var/lib/mec-conpaas/firstboot.done", check=False).returncode == 0
    log = ssh.run("sudo journalctl -b -u mec-conpaas-firstboot --no-pager").stdout
    assert "configuration from /boot/firmware/mec-conpaas.txt applied" in log
    # Applied secrets are gone from the FAT file (readable by anyone with the card).
    card = ssh.run("sudo cat /boot/firmware/mec-conpaas.txt").stdout
    assert "not a real passphrase" not in card and master.node_token not in card
    assert "# wifi_passphrase = (removed by first boot" in card
    assert "# registration_token = (removed by first boot" in card
    # New host keys were made on this boot, and password logins are off.
    assert ssh.run("ls /etc/ssh/ssh_host_ed25519_key.pub", check=False).returncode == 0
    sshd = ssh.run("sudo sshd -T").stdout.splitlines()
    assert "passwordauthentication no" in sshd
    assert "mec-conpaas-firstboot" in g.console_text(), "first boot said nothing on the console"


def test_registers_with_master(image, booted, master):
    g, ssh = booted
    conf = ssh.run("sudo cat /etc/mec-conpaas/mec-conpaas.conf").stdout
    assert re.search(rf"^manager_url = {re.escape(master.guest_url)}$", conf, re.M), conf
    assert re.search(rf"^registration_token = {re.escape(master.node_token)}$", conf, re.M)
    assert re.search(r"^node_name = ap-test-1$", conf, re.M)
    if "mec_conpaas_node" not in roles_in(image):
        pytest.skip("profile without mec_conpaas_node: no node agent to register")
    assert ssh.run("systemctl is-enabled mec-conpaas-node-agent").stdout.strip() == "enabled"
    # The real manager lists the node once its agent registered and heartbeats.
    node = master.wait_node_up("ap-test-1")
    assert node and node["state"] == "up", (node, master.log()[-2000:])
    assert node["hostname"] == "ap-test-1"
    assert node["report"], "no resource report heartbeated by the node agent"
    # The settings file's one mistake (imagelib.settings: an unknown key) did not stop
    # first boot; it is on the login screen and, sent at registration, in node show.
    assert [w.split(" (known")[0] for w in node["settings_warnings"]] == [
        "line 10: unknown setting 'colour' ignored"], node["settings_warnings"]
    assert "'colour'" in ssh.run("cat /etc/issue.d/mec-conpaas-firstboot.issue").stdout


def test_joined_over_pinned_tls_and_applied_its_allocation(image, booted, master):
    """The researcher's path (README "Joining"): the join token pins the master's
    CA, the node checked it before sending the secret, holds its own credential,
    and wrote the number, channel, client subnet and instance network the
    master's allocator gave it into hostapd, dnsmasq, wlan0 and the bridge."""
    g, ssh = booted
    if "mec_conpaas_node" not in roles_in(image):
        pytest.skip("profile without mec_conpaas_node: no node agent to join")
    node = master.wait_node_up("ap-test-1")
    assert node and node["state"] == "up", (node, master.log()[-2000:])
    alloc = node["allocation"]
    assert alloc and alloc["source"] == "joined", node
    other = master.neighbour
    assert alloc["number"] != other["number"]
    assert alloc["client_network"] != other["client_network"]
    assert alloc["wifi_channel"] != other["wifi_channel"]
    state = "/var/lib/mec-conpaas"
    with open(master.ca_file, "rb") as f:
        ca = f.read()
    assert ssh.run(f"sudo cat {state}/manager-ca.pem").stdout.encode() == ca
    assert master.node_token.startswith(hashlib.sha256(
        ssl.PEM_cert_to_DER_cert(ca.decode())).hexdigest() + "::")
    assert ssh.run(f"sudo stat -c %a {state}/node-credential").stdout.strip() == "600"
    agent = ssh.run("sudo journalctl -b -u mec-conpaas-node-agent --no-pager "
                    "-o short-monotonic").stdout
    assert "matches the join token's pin" in agent, agent[-3000:]
    # Joined: no refusal left on the login screen or the console ([join] notices).
    assert ssh.run("test -e /etc/issue.d/mec-conpaas-join.issue",
                   check=False).returncode != 0
    assert "NOT JOINED" not in g.console_text()
    # Seconds since the guest's kernel started (bench/join.py reads them).
    for key, what in (("joined_s", "joined "), ("registered_s", "registered with ")):
        m = re.search(r"^\[\s*([0-9.]+)\].*" + what, agent, re.M)
        if m:
            g.timings[key] = round(float(m.group(1)), 1)
    assert json.loads(ssh.run(f"sudo cat {state}/allocation.json").stdout) == alloc
    conf = ssh.run("sudo cat /etc/mec-conpaas/mec-conpaas.conf").stdout
    assert re.search(r"^networks = allocated$", conf, re.M), conf
    assert re.search(r"^notices = /dev/console,/etc/issue.d/mec-conpaas-join.issue$",
                     conf, re.M), conf
    client = ipaddress.IPv4Network(alloc["client_network"])
    gw = next(client.hosts())
    if "wifi_ap" in roles_in(image):
        hostapd = ssh.run("sudo cat /etc/hostapd/hostapd.conf").stdout.splitlines()
        assert f"channel={alloc['wifi_channel']}" in hostapd
        dnsmasq = ssh.run("cat /etc/dnsmasq.d/mec-conpaas-ap.conf").stdout
        start, end = re.search(r"^dhcp-range=([^,]+),([^,]+),", dnsmasq, re.M).groups()
        assert ipaddress.IPv4Address(start) in client and ipaddress.IPv4Address(end) in client
        assert f"dhcp-option=option:router,{gw}" in dnsmasq.splitlines()
        wlan0 = ssh.run("cat /etc/network/interfaces.d/wlan0").stdout
        assert re.search(rf"^\s*address {gw}/{client.prefixlen}$", wlan0, re.M), wlan0
    inst = ipaddress.IPv4Network(alloc["instance_network"])
    script = ssh.run("cat /usr/local/sbin/mec-conpaas-network").stdout
    assert f"ADDRESS={next(inst.hosts())}/{inst.prefixlen}" in script.splitlines()
    live = ssh.run("ip -4 -o addr show dev mecbr0").stdout
    assert f" {next(inst.hosts())}/{inst.prefixlen} " in live, live


def test_enrolled_with_master(image, booted, master):
    """The image's OpenStack files carried placeholder passwords; first boot's
    enrollment put the master's in and started the OpenStack units."""
    g, ssh = booted
    if "nova_compute_lxc" not in roles_in(image):
        pytest.skip("profile without nova_compute_lxc: no OpenStack service to enroll")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and ssh.run(
            "sudo test -f /var/lib/mec-conpaas/openstack.enrolled", check=False).returncode:
        time.sleep(3)
    log = ssh.run("sudo journalctl -b -t mec-conpaas-enroll --no-pager", check=False).stdout
    assert ssh.run("sudo test -f /var/lib/mec-conpaas/openstack.enrolled",
                   check=False).returncode == 0, log
    pw = master.enrollment["passwords"]
    nova = ssh.run("sudo cat /etc/nova/nova.conf").stdout
    assert f"transport_url = rabbit://openstack:{pw['rabbit']}@10.0.2.2:5672/" in nova
    assert f"password = {pw['nova']}" in nova and f"password = {pw['placement']}" in nova
    every = ssh.run("sudo cat /etc/nova/nova.conf /etc/neutron/neutron.conf "
                    "/etc/cinder/cinder.conf").stdout
    assert "mec-unset-" not in every, "a password placeholder was left"
    assert f":{pw['cinder_db']}@10.0.2.2/cinder" in every
    # Held back by their drop-in until enrolled, then started by enroll.
    for unit in ("nova-compute", "neutron-linuxbridge-agent", "cinder-volume"):
        props = ssh.run(f"systemctl show -p ConditionResult -p ExecMainStartTimestamp "
                        f"{unit}").stdout
        assert "ConditionResult=yes" in props, (unit, props, log)
        assert not re.search(r"^ExecMainStartTimestamp=$", props, re.M), (unit, props)


def test_nova_compute_enabled(image, booted):
    g, ssh = booted
    if "nova_compute_lxc" not in roles_in(image):
        pytest.skip("profile without nova_compute_lxc")
    assert ssh.run("systemctl is-enabled nova-compute").stdout.strip() == "enabled"
    # virt_type is in nova-compute.conf (roles/nova_compute_lxc), read after nova.conf.
    conf = ssh.run("sudo cat /etc/nova/nova.conf /etc/nova/nova-compute.conf").stdout
    assert re.search(r"^virt_type\s*=\s*lxc", conf, re.M)


# -------------------------------------------------------------- bad input
def test_malformed_settings_reported_and_nothing_half_applied(fleet, rootfs, keypair):
    """A malformed file: errors on the console and in the journal (priority err),
    the node is reachable over SSH with the key from the file, and nothing else
    from the file was applied."""
    g = guest(fleet, "malformed")
    ssh = SSH(g, keypair[0])
    ssh.wait_boot_finished()
    props = ssh.run("systemctl show -p ActiveState -p Result mec-conpaas-firstboot").stdout
    assert "ActiveState=failed" in props, props
    errs = ssh.run("sudo journalctl -b -p err -t mec-conpaas-firstboot --no-pager").stdout
    for what in ("hostname", "wifi_passphrase", "wifi_country"):
        assert what in errs, (what, errs)
    # An unknown key alone would not stop first boot: a warning, reported too.
    notes = ssh.run("sudo journalctl -b -p warning -t mec-conpaas-firstboot "
                    "--no-pager").stdout
    assert "unknown setting 'colour' ignored" in notes, notes
    console = g.console_text()
    assert "mec-conpaas.txt: hostname" in console and "NOT configured" in console
    assert ssh.run("hostname").stdout.strip() != "ap_bad_name!"
    assert ssh.run("cat /etc/hostname").stdout == rootfs.read("/etc/hostname")
    assert ssh.run("sudo test -e /var/lib/mec-conpaas/firstboot.done",
                   check=False).returncode != 0
    issue = ssh.run("cat /etc/issue.d/mec-conpaas-firstboot.issue").stdout
    assert "FAILED" in issue and "warning: " in issue and "'colour'" in issue, issue


def test_missing_settings_reported_and_ssh_up(fleet):
    """No file at all: reported on the console, sshd still answers."""
    g = guest(fleet, "missing")
    g.wait_console(r"mec-conpaas\.txt: file not found")
    g.wait_console(LOGIN_PROMPT)
    deadline = time.monotonic() + 120
    banner = b""
    while time.monotonic() < deadline and not banner.startswith(b"SSH-2.0"):
        try:
            with socket.create_connection(("127.0.0.1", g.ssh_port), timeout=10) as s:
                banner = s.recv(64)
        except OSError:
            time.sleep(2)
    assert banner.startswith(b"SSH-2.0"), banner
    assert "NOT configured" in g.console_text()
