"""Emulated boot of a built image (issue 4): qemu-system-aarch64 -M virt
-cpu cortex-a53 -m 1024 with the image's own kernel, initrd and kernel command
line (root=PARTUUID=..., cgroup_enable=memory; only the console is changed).

The image is copied and enlarged by 1 GiB (a card bigger than the image), a
settings file is put on its FAT boot partition with mtools, and the node is
reached over SSH through qemu user networking forwarded to 127.0.0.1, logging
in with the key from that file: the login itself checks that the key was
installed, that host keys were generated and that sshd runs.  A stand-in
master listens on 127.0.0.1 (the guest sees it as 10.0.2.2) and records what
the node agent sends when it registers.

Select with -m emulated_boot; MEC_CONPAAS_BOOT_TIMEOUT (s, default 900) bounds
each boot.  Console logs are kept in MEC_CONPAAS_ARTIFACTS if set.
"""

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest
from imagelib import MIB
from imagelib import roles_in
from imagelib import sh

pytestmark = pytest.mark.emulated_boot

BOOT_TIMEOUT = int(os.environ.get("MEC_CONPAAS_BOOT_TIMEOUT", "900"))
GROW_MIB = 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandInMaster:
    """Records every HTTP request (the node agent registering) and answers 200."""

    def __init__(self):
        self.requests = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode("utf-8", "replace") if n else ""
                outer.requests.append({"method": self.command, "path": self.path, "body": body,
                                       "auth": self.headers.get("Authorization", "")})
                data = json.dumps({"status": "ok", "id": "stand-in"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = _any

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Guest:
    def __init__(self, image, workdir, name, settings_text):
        self.image, self.name = image, name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.disk = os.path.join(self.dir, "disk.img")
        sh("cp", "--sparse=always", image.raw, self.disk)
        self.orig_bytes = os.path.getsize(self.disk)
        with open(self.disk, "r+b") as f:
            f.truncate(self.orig_bytes + GROW_MIB * MIB)
        mt = f"{self.disk}@@{image.offset(1)}"
        if settings_text is not None:
            cfg = os.path.join(self.dir, "mec-conpaas.txt")
            with open(cfg, "w") as f:
                f.write(settings_text)
            sh("mcopy", "-o", "-i", mt, cfg, "::mec-conpaas.txt")
        kver = image.manifest["kernel"]
        for f in ("vmlinuz", "initrd.img"):
            sh("mcopy", "-o", "-i", mt, f"::{f}-{kver}", os.path.join(self.dir, f))
        cmdline = image.boot_read("cmdline.txt").split()
        cmdline = [a for a in cmdline if not a.startswith("console=")] + ["console=ttyAMA0"]
        self.cmdline = " ".join(cmdline)
        self.console = os.path.join(self.dir, "console.log")
        self.ssh_port = free_port()
        self.proc = None

    def start(self):
        cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-m", "1024",
               "-smp", os.environ.get("MEC_CONPAAS_BOOT_SMP", "2"),
               "-display", "none", "-monitor", "none",
               "-serial", f"file:{self.console}",
               "-kernel", os.path.join(self.dir, "vmlinuz"),
               "-initrd", os.path.join(self.dir, "initrd.img"),
               "-append", self.cmdline,
               "-drive", f"file={self.disk},if=virtio,format=raw",
               "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
               "-device", "virtio-net-pci,netdev=n0", "-no-reboot"]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)

    def console_text(self):
        try:
            with open(self.console, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern, timeout=BOOT_TIMEOUT):
        deadline = self.t0 + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.console_text(), re.M)
            if m:
                return time.monotonic() - self.t0
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        pytest.fail(f"{self.name}: {pattern!r} not on the console after "
                    f"{time.monotonic() - self.t0:.0f} s\n...{self.console_text()[-3000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        art = os.environ.get("MEC_CONPAAS_ARTIFACTS")
        if art:
            os.makedirs(art, exist_ok=True)
            shutil.copy(self.console, os.path.join(art, f"console-{self.name}.log"))


class SSH:
    def __init__(self, guest, key):
        self.guest, self.key = guest, key

    def run(self, command, check=True, timeout=120):
        cmd = ["ssh", "-i", self.key, "-p", str(self.guest.ssh_port), "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "mec@127.0.0.1", command]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"ssh {command!r} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def wait(self, timeout=BOOT_TIMEOUT):
        deadline = self.guest.t0 + timeout
        while time.monotonic() < deadline:
            if self.guest.proc.poll() is not None:
                break
            try:
                if self.run("true", check=False, timeout=30).returncode == 0:
                    return time.monotonic() - self.guest.t0
            except subprocess.TimeoutExpired:
                pass
            time.sleep(3)
        pytest.fail(f"no SSH login after {time.monotonic() - self.guest.t0:.0f} s\n"
                    f"...{self.guest.console_text()[-4000:]}")


@pytest.fixture(scope="module")
def keypair(image):
    d = os.path.join(image.workdir, "sshkey")
    os.makedirs(d, exist_ok=True)
    key = os.path.join(d, "id_ed25519")
    if not os.path.exists(key):
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "image-test", "-f", key)
    with open(key + ".pub") as f:
        return key, f.read().strip()


@pytest.fixture(scope="module")
def master():
    m = StandInMaster()
    yield m
    m.close()


def settings(pubkey, master_port, hostname="ap-test-1"):
    return (
        "# written by tests/image/test_emulated_boot.py\r\n"  # CRLF: as from a Windows editor
        f"hostname = {hostname}\r\n"
        "wifi_ssid = MEC-ConPaaS test\r\n"
        "wifi_passphrase = \"not a real passphrase\"\r\n"
        "wifi_country = nl\r\n"
        f"master = http://10.0.2.2:{master_port}\r\n"
        "registration_token = image-test-token\r\n"
        f"ssh_authorized_key = {pubkey}\r\n"
        "backbone = dhcp\r\n")


MALFORMED = ("hostname = ap_bad_name!\n"           # invalid
             "wifi_ssid = x\n"
             "wifi_passphrase = short\n"           # invalid (< 8)
             "wifi_country = Netherlands\n"        # invalid
             "master = 192.0.2.10\n"
             "registration_token = t\n"
             "ssh_authorized_key = {pub}\n"
             "colour = blue\n")                    # unknown key


@pytest.fixture(scope="module")
def fleet(image, keypair, master):
    """All boots start at once (each qemu is one more process sharing the CPUs):
    'good' (valid settings), 'malformed', 'missing' (no settings file).
    MEC_CONPAAS_BOOTS=good,malformed,missing selects which."""
    key, pub = keypair
    wanted = os.environ.get("MEC_CONPAAS_BOOTS", "good,malformed,missing").split(",")
    texts = {"good": settings(pub, master.port), "malformed": MALFORMED.format(pub=pub),
             "missing": None}
    guests = {}
    try:
        for name in ("good", "malformed", "missing"):
            if name in wanted:
                guests[name] = Guest(image, image.workdir, name, texts[name])
                guests[name].start()
        yield guests
    finally:
        for g in guests.values():
            g.stop()


def guest(fleet, name):
    if name not in fleet:
        pytest.skip(f"boot {name!r} not selected (MEC_CONPAAS_BOOTS)")
    return fleet[name]


@pytest.fixture(scope="module")
def booted(fleet, keypair):
    g = guest(fleet, "good")
    ssh = SSH(g, keypair[0])
    ssh.wait()
    ssh.run("sudo systemctl is-system-running --wait", check=False, timeout=600)
    return g, ssh


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
    assert re.search(r"login: ?$", g.console_text(), re.M), "no login prompt on the console"


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
    fs_bytes = int(ssh.run("df -B1 --output=size / | tail -1").stdout)
    assert fs_bytes > image.size(2) + (GROW_MIB - 100) * MIB, "filesystem not grown"
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
    mounts = ssh.run("findmnt -no SOURCE,FSTYPE /boot/firmware").stdout.split()
    assert mounts == ["/dev/vda1", "vfat"], mounts


def test_settings_file_applied(booted):
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
    # New host keys were made on this boot, and password logins are off.
    assert ssh.run("ls /etc/ssh/ssh_host_ed25519_key.pub", check=False).returncode == 0
    sshd = ssh.run("sudo sshd -T").stdout.splitlines()
    assert "passwordauthentication no" in sshd
    assert "mec-conpaas-firstboot" in g.console_text(), "first boot said nothing on the console"


def test_registers_with_master(image, booted, master):
    g, ssh = booted
    conf = ssh.run("sudo cat /etc/mec-conpaas/mec-conpaas.conf").stdout
    assert re.search(rf"^manager_url = http://10\.0\.2\.2:{master.port}$", conf, re.M), conf
    assert re.search(r"^registration_token = image-test-token$", conf, re.M)
    assert re.search(r"^node_name = ap-test-1$", conf, re.M)
    if "mec_conpaas_node" not in roles_in(image):
        pytest.skip("profile without mec_conpaas_node: no node agent to register")
    assert ssh.run("systemctl is-enabled mec-conpaas-node-agent").stdout.strip() == "enabled"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(
            r["path"].endswith("/register") for r in master.requests):
        time.sleep(2)
    assert master.requests, "the node agent never contacted the master"
    # The node agent's registration call (mec_conpaas/agents/node/agent.py).
    regs = [r for r in master.requests
            if r["method"] == "POST" and r["path"].endswith("/v1/nodes/register")]
    assert regs, master.requests[:5]
    body = json.loads(regs[0]["body"])
    assert body["name"] == "ap-test-1", body
    assert regs[0]["auth"] == "Bearer image-test-token"


def test_nova_compute_enabled(image, booted):
    g, ssh = booted
    if "nova_compute_lxc" not in roles_in(image):
        pytest.skip("profile without nova_compute_lxc")
    assert ssh.run("systemctl is-enabled nova-compute").stdout.strip() == "enabled"
    conf = ssh.run("sudo cat /etc/nova/nova.conf").stdout
    assert re.search(r"^virt_type\s*=\s*lxc", conf, re.M)


# -------------------------------------------------------------- bad input
def test_malformed_settings_reported_and_nothing_half_applied(fleet, rootfs, keypair):
    """A malformed file: errors on the console and in the journal (priority err),
    the node is reachable over SSH with the key from the file, and nothing else
    from the file was applied."""
    g = guest(fleet, "malformed")
    ssh = SSH(g, keypair[0])
    ssh.wait()
    ssh.run("sudo systemctl is-system-running --wait", check=False, timeout=600)
    props = ssh.run("systemctl show -p ActiveState -p Result mec-conpaas-firstboot").stdout
    assert "ActiveState=failed" in props, props
    errs = ssh.run("sudo journalctl -b -p err -t mec-conpaas-firstboot --no-pager").stdout
    for what in ("hostname", "wifi_passphrase", "wifi_country", "unknown setting 'colour'"):
        assert what in errs, (what, errs)
    console = g.console_text()
    assert "mec-conpaas.txt: hostname" in console and "NOT configured" in console
    assert ssh.run("hostname").stdout.strip() != "ap_bad_name!"
    assert ssh.run("cat /etc/hostname").stdout == rootfs.read("/etc/hostname")
    assert ssh.run("sudo test -e /var/lib/mec-conpaas/firstboot.done",
                   check=False).returncode != 0
    assert "FAILED" in ssh.run("cat /etc/issue.d/mec-conpaas-firstboot.issue").stdout


def test_missing_settings_reported_and_ssh_up(fleet):
    """No file at all: reported on the console, sshd still answers."""
    g = guest(fleet, "missing")
    g.wait_console(r"mec-conpaas\.txt: file not found")
    g.wait_console(r"login: ?$")
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
