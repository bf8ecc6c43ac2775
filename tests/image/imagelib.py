"""Helpers for the image tests (tests/image): see conftest.py.

The image under test is MEC_CONPAAS_IMAGE (a NAME.img.xz, or a raw NAME.img
with NAME.manifest.json found through MEC_CONPAAS_MANIFEST or next to it), else
the newest image-builder/out/*.img.xz.  Without an image the tests are skipped,
unless MEC_CONPAAS_IMAGE_REQUIRED=1 (CI), where that is an error.

Everything mounted or attached here is read-only and released at the end.
Needs root (losetup, mount), sfdisk, mtools, e2fsprogs, xz.
"""

import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(REPO, "image-builder", "out")
MIB = 1024 * 1024
os.environ.setdefault("MTOOLS_SKIP_CHECK", "1")


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw)


def find_image():
    img = os.environ.get("MEC_CONPAAS_IMAGE")
    if not img:
        found = sorted(glob.glob(os.path.join(OUT, "*.img.xz")), key=os.path.getmtime)
        img = found[-1] if found else None
    if not img or not os.path.exists(img):
        msg = f"no built image (MEC_CONPAAS_IMAGE={img!r}; build one with image-builder/build.py)"
        if os.environ.get("MEC_CONPAAS_IMAGE_REQUIRED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    if os.geteuid() != 0:
        pytest.skip("image tests need root (losetup, mount)")
    return os.path.abspath(img)


class Image:
    """A built image, decompressed once, with its manifest and partition table."""

    def __init__(self, artifact, raw, manifest, manifest_path, workdir):
        self.artifact = artifact
        self.raw = raw
        self.manifest = manifest
        self.manifest_path = manifest_path
        self.workdir = workdir
        self.table = json.loads(sh("sfdisk", "-J", raw).stdout)["partitiontable"]
        parts = sorted(self.table["partitions"], key=lambda p: p["start"])
        self.parts = parts
        self.sector = self.table.get("sectorsize", 512)

    def offset(self, n):
        return self.parts[n - 1]["start"] * self.sector

    def size(self, n):
        return self.parts[n - 1]["size"] * self.sector

    def partuuid(self, n):
        return f"{int(self.table['id'], 16):08x}-{n:02x}"

    def mtools_img(self):
        return f"{self.raw}@@{self.offset(1)}"

    def boot_read(self, name):
        return sh("mtype", "-i", self.mtools_img(), f"::{name}").stdout

    def boot_ls(self):
        out = sh("mdir", "-b", "-i", self.mtools_img(), "::/").stdout
        return sorted(line.strip().split("/")[-1] for line in out.splitlines() if line.strip())


class Root:
    def __init__(self, path, device):
        self.path = path
        self.device = device

    def p(self, rel):
        return os.path.join(self.path, rel.lstrip("/"))

    def resolve(self, rel):
        """Resolve symlinks inside the image (absolute links point into the image)."""
        rel = "/" + rel.lstrip("/")
        for _ in range(40):
            full = self.p(rel)
            if not os.path.islink(full):
                return full
            target = os.readlink(full)
            rel = target if target.startswith("/") else os.path.normpath(
                os.path.join(os.path.dirname(rel), target))
        raise RuntimeError(f"symlink loop at {rel}")

    def read(self, rel):
        with open(self.resolve(rel), encoding="utf-8", errors="replace") as f:
            return f.read()

    def exists(self, rel):
        return os.path.lexists(self.p(rel))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def roles_in(image):
    return set(image.manifest["build_inputs"]["roles"])


def needs_role(image, role):
    if role not in roles_in(image):
        pytest.skip(f"profile {image.manifest['profile']!r} does not apply role {role}")


# ----------------------------------------------------------- emulated boots
# A getty login prompt on the serial console; kernel messages may follow it on the
# same line (seen on the full image: "ap-test-1 login: [  172.05] Rounding down ...").
LOGIN_PROMPT = r"login: ?(\[ *\d+\.\d+\].*)?$"
BOOT_TIMEOUT = int(os.environ.get("MEC_CONPAAS_BOOT_TIMEOUT", "900"))
# SSH answering to a finished boot (systemctl is-system-running --wait).
BOOT_WAIT = 600
GROW_MIB = 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What the master's manager hands out at enrollment in these tests (not real secrets).
ENROLLMENT = {"controller_host": "10.0.2.2", "passwords": {
    k: f"image-test-{k.replace('_', '-')}-pw" for k in
    ("rabbit", "nova", "placement", "neutron", "cinder", "cinder_db")}}


class Manager:
    """The real MEC-ConPaaS manager (mec-conpaas-manager, from this checkout) as the
    master a node registers and enrolls with: its own SQLite state, a node token
    and an admin token made with mec-conpaas-manage, an OpenStack enrollment file.
    It listens on 127.0.0.1 (qemu user networking shows it to guests as 10.0.2.2).
    With ``tls`` (the researcher's path, README "Joining") it serves HTTPS only, with a
    deployment CA from ``mec-conpaas-manage ca create`` whose certificate covers
    10.0.2.2, and its node token is a join token pinning that CA (``<sha256>::secret``).
    """

    def __init__(self, workdir, enrollment=ENROLLMENT, tls=False):
        self.dir = os.path.join(workdir, "master")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.port = free_port()
        self.enrollment = enrollment
        self.enrollment_file = os.path.join(self.dir, "openstack-enrollment.json")
        if enrollment is not None:
            with open(self.enrollment_file, "w") as f:
                json.dump(enrollment, f)
        self.conf = os.path.join(self.dir, "mec-conpaas.conf")
        with open(self.conf, "w") as f:
            f.write(f"[DEFAULT]\nstate_path = {self.dir}/state\nrun_path = {self.dir}/run\n"
                    f"log_file = {self.dir}/manager.log\n"
                    f"[api]\nbind_host = 127.0.0.1\nbind_port = {self.port}\n"
                    "[manager]\ndriver = lxc\n"
                    # An instance starts under TCG on the booted node: its app
                    # answers minutes, not seconds, after the container starts.
                    "health_timeout = 600\n"
                    + (f"openstack_enrollment_file = {self.enrollment_file}\n"
                       if enrollment is not None else "")
                    + (f"[tls]\ncert_file = {self.dir}/tls/cert.pem\n"
                       f"key_file = {self.dir}/tls/key.pem\n"
                       f"ca_file = {self.dir}/tls/ca.pem\n"
                       f"ca_key_file = {self.dir}/tls/ca-key.pem\n" if tls else ""))
        manage = [sys.executable, "-m", "mec_conpaas.cmd.manage", "--config-file", self.conf]
        sh(*manage, "db", "sync")
        self.tls = None
        if tls:
            sh(*manage, "ca", "create", "--name", "10.0.2.2", "--name", "127.0.0.1")
            self.ca_file = f"{self.dir}/tls/ca.pem"
            self.tls = ssl.create_default_context(cafile=self.ca_file)
        admin_file = os.path.join(self.dir, "admin.token")
        sh(*manage, "bootstrap", "--admin-token-file", admin_file)
        with open(admin_file) as f:
            self.admin_token = f.read().strip()
        self.node_token = sh(*manage, "node-token", "create").stdout.strip()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mec_conpaas.cmd.manager", "--config-file", self.conf],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        # What a node's settings file says (master =).
        self.guest_url = f"{scheme}://10.0.2.2:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/v1/nodes", self.admin_token)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("the manager did not start:\n" + self.log()[-3000:])
                time.sleep(0.5)

    def get(self, path, token):
        """(status, JSON body) of an API call."""
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.tls) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def join_neighbour(self, name, number):
        """A node that joined before the booted one (its allocation taken), so that
        the booted node's allocation differs from the image's defaults."""
        manage = [sys.executable, "-m", "mec_conpaas.cmd.manage", "--config-file", self.conf]
        secret = sh(*manage, "node-token", "create").stdout.strip().rpartition("::")[2]
        body = json.dumps({"id": "00000000-0000-4000-8000-%012d" % number, "name": name,
                           "identity": f"serial:image-test-{number}", "hostname": name,
                           "mac": "02:00:00:00:00:%02x" % number}).encode()
        req = urllib.request.Request(self.url + "/v1/nodes/join", data=body, headers={
            "Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30, context=self.tls) as r:
            return json.load(r)["allocation"]

    def wait_node_up(self, name, timeout=300):
        """The node's record once its agent registered and heartbeats (or the last seen)."""
        deadline = time.monotonic() + timeout
        node = None
        while time.monotonic() < deadline:
            node = self.node(name)
            if node and node["state"] == "up":
                break
            time.sleep(3)
        return node

    def node(self, name):
        status, body = self.get(f"/v1/nodes/{name}", self.admin_token)
        return body.get("node") if status == 200 else None

    def log(self):
        try:
            with open(os.path.join(self.dir, "manager.log")) as f:
                return f.read()
        except OSError:
            return ""

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Backbone:
    """A second network card of a guest, as the backbone between a Pi and the
    master: a tap device on this machine (``10.250.0.1/30``; the guest's end,
    found by its MAC, gets ``10.250.0.2/30``).  qemu's user networking lets the
    guest reach this machine's manager (10.0.2.2) but nothing on this machine
    reach the guest; over this link the manager reaches the node agent and its
    instances as a master does, through a route to the node's instance network
    via the node.  Only this machine and the guest are on the link (nothing is
    forwarded off the machine); the device and its routes go at ``delete``.

    The manager's whole instance network pool is routed into the link from
    the start: the manager calls a node agent as soon as it registers, before
    the test knows which network the join gave the node, and with only this
    machine's default route those calls left the machine (session 10: an
    outside TLS endpoint answered them for the node agent's address)."""

    NAME = "mecimg0"
    HOST = "10.250.0.1"
    GUEST = "10.250.0.2"
    PREFIX = 30
    MAC = "52:54:00:6d:65:63"
    # [join] instance_network_pool's default (the test manager keeps it).
    POOL = "10.100.0.0/16"

    def create(self):
        if os.path.exists(f"/sys/class/net/{self.NAME}"):
            raise RuntimeError(
                f"network device {self.NAME} exists already: another image test runs, or "
                f"an earlier one was killed (then: ip link del {self.NAME})")
        sh("ip", "tuntap", "add", "dev", self.NAME, "mode", "tap")
        self.created = True
        sh("ip", "addr", "add", f"{self.HOST}/{self.PREFIX}", "dev", self.NAME)
        sh("ip", "link", "set", self.NAME, "up")
        self.route(self.POOL)

    def qemu_args(self):
        return ["-netdev", f"tap,id=n1,ifname={self.NAME},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n1,mac={self.MAC}"]

    def configure_guest(self, ssh):
        """The guest's end of the link (no unit of the image manages it)."""
        ssh.run("sudo sh -c " + shlex.quote(
            "set -e\n"
            f"dev=$(grep -l -i '^{self.MAC}$' /sys/class/net/*/address | cut -d/ -f5)\n"
            "[ -n \"$dev\" ]\n"
            "ip link set \"$dev\" up\n"
            f"ip addr replace {self.GUEST}/{self.PREFIX} dev \"$dev\"\n"))

    def route(self, network):
        """Reach ``network`` (the node's instance network) through the guest.
        ``onlink``: before the guest's end is configured nothing answers for
        its address, and a call fails here instead of going elsewhere."""
        sh("ip", "route", "replace", str(network), "via", self.GUEST, "dev", self.NAME,
           "onlink")

    created = False

    def delete(self):
        if self.created:  # never another run's device
            subprocess.run(["ip", "link", "del", self.NAME], capture_output=True)
            self.created = False


class Guest:
    def __init__(self, image, workdir, name, settings_text, backbone=None):
        self.image, self.name = image, name
        self.backbone = backbone
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
        # Try a kernel argument on a built image without rebuilding it (diagnosis:
        # the boot then differs from a Pi's, say so wherever its results go).
        cmdline += os.environ.get("MEC_CONPAAS_BOOT_EXTRA_ARGS", "").split()
        self.cmdline = " ".join(cmdline)
        self.console = os.path.join(self.dir, "console.log")
        self.ssh_port = free_port()
        self.proc = None
        self.timings = {}  # seconds of what the tests measured on this guest

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
        if self.backbone:
            self.backbone.create()
            cmd[-1:-1] = self.backbone.qemu_args()
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
        # Look once more after the deadline (or qemu's exit): a guest that wrote the
        # line while this process waited for the CPU must not fail the test.
        while True:
            over = time.monotonic() >= deadline or self.proc.poll() is not None
            if re.search(pattern, self.console_text(), re.M):
                return time.monotonic() - self.t0
            if over:
                break
            time.sleep(1)
        pytest.fail(f"{self.name}: {pattern!r} not on the console after "
                    f"{time.monotonic() - self.t0:.0f} s\n...{self.console_text()[-3000:]}")

    def keep(self, name, files):
        """Save ``{filename: text}`` under this guest's artifacts, in ``name``/."""
        d = os.path.join(self.artifacts(), name)
        os.makedirs(d, exist_ok=True)
        for fn, text in files.items():
            with open(os.path.join(d, fn), "w") as f:
                f.write(text)

    def artifacts(self):
        d = os.path.join(artifacts_dir(), self.name)
        os.makedirs(d, exist_ok=True)
        return d

    def collect(self, key, why):
        """Keep what shows why a boot went wrong: the serial console, the failed
        units, the pending jobs (what holds ``is-system-running``), the journal.
        Returns the pending jobs (for the failure message)."""
        d = self.artifacts()
        with open(os.path.join(d, "why.txt"), "a") as f:
            f.write(f"{time.monotonic() - self.t0:.0f} s after power-on: {why}\n")
        if os.path.exists(self.console):
            shutil.copy(self.console, os.path.join(d, "console.log"))
        jobs = ""
        ssh = SSH(self, key)
        for name, cmd in DIAGNOSTICS:
            try:
                res = ssh.run(cmd, check=False, timeout=120)
                out = res.stdout + res.stderr
            except subprocess.TimeoutExpired:
                out = f"(timed out: {cmd})"
            with open(os.path.join(d, name), "w") as f:
                f.write(out)
            if name == "list-jobs.txt":
                jobs = out
        return jobs

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.backbone:
            self.backbone.delete()
        if os.path.exists(self.console):
            shutil.copy(self.console, os.path.join(self.artifacts(), "console.log"))
        if self.timings:
            with open(os.path.join(self.artifacts(), "timings.json"), "w") as f:
                json.dump(self.timings, f, indent=1)


# What Guest.collect keeps, one file each.
DIAGNOSTICS = [
    ("system-state.txt", "systemctl is-system-running; systemctl status --no-pager | head -n 20"),
    ("failed.txt", "systemctl --failed --no-pager"),
    ("list-jobs.txt", "systemctl list-jobs --no-pager"),
    ("blame.txt", "systemd-analyze blame --no-pager | head -n 40"),
    ("journal.txt", "sudo journalctl -b --no-pager -o short-monotonic"),
]


def guest(fleet, name):
    if name not in fleet:
        pytest.skip(f"boot {name!r} not selected (MEC_CONPAAS_BOOTS)")
    return fleet[name]


def artifacts_dir():
    """$MEC_TEST_ARTIFACTS/image (the project's artifact root, default
    /tmp/mec-test-artifacts; tools/ci/image.sh points it at its work dir)."""
    root = os.environ.get("MEC_TEST_ARTIFACTS") or os.environ.get("MEC_CONPAAS_ARTIFACTS") \
        or "/tmp/mec-test-artifacts"
    return os.path.join(root, "image")


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

    def wait_boot_finished(self):
        """SSH answers, then ``is-system-running --wait`` returns; else the test
        fails naming the jobs that hold the boot (artifacts kept)."""
        # Power-on (qemu start) to an SSH login: bench/join.py's floor and ratio.
        self.guest.timings["ssh_s"] = round(self.wait(), 1)
        try:
            self.run("sudo systemctl is-system-running --wait", check=False, timeout=BOOT_WAIT)
        except subprocess.TimeoutExpired:
            g = self.guest
            jobs = g.collect(self.key, f"boot not finished {BOOT_WAIT} s after SSH answered")
            pytest.fail(f"boot not finished {BOOT_WAIT} s after SSH answered; pending jobs:\n"
                        f"{jobs}\n(console, failed units, jobs, journal in {g.artifacts()})")
        self.guest.timings["boot_finished_s"] = round(time.monotonic() - self.guest.t0, 1)

    def wait(self, timeout=BOOT_TIMEOUT):
        deadline = self.guest.t0 + timeout
        # As in Guest.wait_console: one try after the deadline too.
        while True:
            if self.guest.proc.poll() is not None:
                break
            over = time.monotonic() >= deadline
            try:
                if self.run("true", check=False, timeout=30).returncode == 0:
                    return time.monotonic() - self.guest.t0
            except subprocess.TimeoutExpired:
                pass
            if over:
                break
            time.sleep(3)
        pytest.fail(f"no SSH login after {time.monotonic() - self.guest.t0:.0f} s\n"
                    f"...{self.guest.console_text()[-4000:]}")


def settings(pubkey, master_url, token, hostname="ap-test-1"):
    return (
        "# written by tests/image/test_emulated_boot.py\r\n"  # CRLF: as from a Windows editor
        f"hostname = {hostname}\r\n"
        "wifi_ssid = MEC-ConPaaS test\r\n"
        "wifi_passphrase = \"not a real passphrase\"\r\n"
        "wifi_country = nl\r\n"
        f"master = {master_url}\r\n"
        f"registration_token = {token}\r\n"
        f"ssh_authorized_key = {pubkey}\r\n"
        "backbone = dhcp\r\n"
        # Not a setting: ignored with a warning, which node show lists (issue 11).
        "colour = blue\r\n")


MALFORMED = ("hostname = ap_bad_name!\n"           # invalid
             "wifi_ssid = x\n"
             "wifi_passphrase = short\n"           # invalid (< 8)
             "wifi_country = Netherlands\n"        # invalid
             "master = 192.0.2.10\n"
             "registration_token = t\n"
             "ssh_authorized_key = {pub}\n"
             "colour = blue\n")                    # unknown key
