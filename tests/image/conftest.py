"""Fixtures for the image tests: they open a BUILT image (image-builder/build.py).

The image under test is MEC_CONPAAS_IMAGE (a NAME.img.xz, or a raw NAME.img
with NAME.manifest.json found through MEC_CONPAAS_MANIFEST or next to it), else
the newest image-builder/out/*.img.xz.  Without an image the tests are skipped,
unless MEC_CONPAAS_IMAGE_REQUIRED=1 (CI), where that is an error.

Everything mounted or attached here is read-only and released at the end.
"""

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imagelib import MALFORMED  # noqa: E402
from imagelib import OUT  # noqa: E402
from imagelib import SSH  # noqa: E402
from imagelib import Backbone  # noqa: E402
from imagelib import Guest  # noqa: E402
from imagelib import Image  # noqa: E402
from imagelib import Manager  # noqa: E402
from imagelib import Root  # noqa: E402
from imagelib import artifacts_dir  # noqa: E402
from imagelib import find_image  # noqa: E402
from imagelib import guest  # noqa: E402
from imagelib import roles_in  # noqa: E402
from imagelib import settings  # noqa: E402
from imagelib import sh  # noqa: E402


@pytest.fixture(scope="session")
def image():
    artifact = find_image()
    workdir = tempfile.mkdtemp(prefix="mec-image-test-", dir=os.environ.get("MEC_CONPAAS_TEST_TMP"))
    try:
        yield open_image(artifact, workdir, os.environ.get("MEC_CONPAAS_MANIFEST"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def floor_image(image):
    """The bare image (MEC_CONPAAS_FLOOR_IMAGE: the ``ci`` or ``base`` profile, no
    node software) whose power-on to SSH is bench/join.py's floor, booted beside
    the image under test in the same run; None without it."""
    artifact = os.environ.get("MEC_CONPAAS_FLOOR_IMAGE")
    if not artifact:
        return None
    workdir = os.path.join(image.workdir, "floor-image")
    os.makedirs(workdir, exist_ok=True)
    return open_image(os.path.abspath(artifact), workdir)


def open_image(artifact, workdir, manifest_path=None):
    """An Image of ``artifact`` (.img.xz decompressed into ``workdir``, or a raw
    .img) with its manifest: ``manifest_path``, else NAME.manifest.json next to
    it or in image-builder/out/."""
    if artifact.endswith(".xz"):
        base = artifact[:-len(".img.xz")]
        raw = os.path.join(workdir, os.path.basename(artifact)[:-3])
        with open(raw, "wb") as f:
            subprocess.run(["xz", "-dc", "-T0", artifact], stdout=f, check=True)
    else:
        base = artifact[:-len(".img")]
        raw = artifact
    if not manifest_path:
        manifest_path = base + ".manifest.json"
        if not os.path.exists(manifest_path):
            manifest_path = os.path.join(OUT, os.path.basename(base) + ".manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    return Image(artifact, raw, manifest, manifest_path, workdir)


@pytest.fixture(scope="session")
def rootfs(image):
    """The root partition attached read-only at its offset and mounted read-only."""
    loop = sh("losetup", "--find", "--show", "--read-only", "--offset", image.offset(2),
              "--sizelimit", image.size(2), image.raw).stdout.strip()
    mnt = tempfile.mkdtemp(prefix="mec-image-root-", dir=image.workdir)
    try:
        sh("mount", "-t", "ext4", "-o", "ro,noload", loop, mnt)
        try:
            yield Root(mnt, loop)
        finally:
            subprocess.run(["umount", mnt], check=False)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
        os.rmdir(mnt)




def pytest_configure(config):
    config.addinivalue_line("markers", "emulated_boot: boots the image under qemu-system-aarch64")


def pytest_collection_modifyitems(session, config, items):
    """Emulated boots last: they are started at the beginning of the session
    (see _start_boots_early) and boot while the other tests run."""
    items.sort(key=lambda it: it.get_closest_marker("emulated_boot") is not None)


@pytest.fixture(scope="session", autouse=True)
def _start_boots_early(request):
    if any(it.get_closest_marker("emulated_boot") for it in request.session.items) \
            and os.environ.get("MEC_CONPAAS_BOOTS", "good") and _image_available():
        request.getfixturevalue("fleet")


def _image_available():
    try:
        find_image()
    except BaseException:  # pytest.skip / pytest.fail: let the tests report it
        return False
    return True


@pytest.fixture(scope="session")
def keypair(image):
    d = os.path.join(image.workdir, "sshkey")
    os.makedirs(d, exist_ok=True)
    key = os.path.join(d, "id_ed25519")
    if not os.path.exists(key):
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "image-test", "-f", key)
    with open(key + ".pub") as f:
        return key, f.read().strip()


@pytest.fixture(scope="session")
def managers(tmp_path_factory):
    """Start real managers (imagelib.Manager) on demand; all stopped at the end."""
    started = []

    def start(name, **kw):
        started.append(Manager(str(tmp_path_factory.mktemp(name)), **kw))
        return started[-1]

    yield start
    for m in started:
        m.close()


@pytest.fixture(scope="session")
def master(managers):
    """The real manager the booted node joins and enrolls with: HTTPS with the
    deployment CA, a pinned join token (the researcher's path)."""
    m = managers("image-master", tls=True)
    # Number 1 (the image's own defaults: 10.42.1.0/24, 10.100.1.0/24) is taken, so
    # the booted node must rewrite its networks, not only its channel.
    m.neighbour = m.join_neighbour("ap-neighbour", 1)
    return m


@pytest.fixture(scope="session")
def fleet(request, image, floor_image, keypair, master):
    """All boots start at once (each qemu is one more process sharing the CPUs):
    'good' (valid settings), 'malformed', 'missing' (no settings file).
    MEC_CONPAAS_BOOTS=good,malformed,missing selects which.  With
    MEC_CONPAAS_FLOOR_IMAGE, 'floor' too: the bare image with valid settings,
    stopped once it answers SSH (test_emulated_boot.test_floor_boot_to_ssh)."""
    key, pub = keypair
    wanted = os.environ.get("MEC_CONPAAS_BOOTS", "good,malformed,missing").split(",")
    texts = {"good": settings(pub, master.guest_url, master.node_token),
             "malformed": MALFORMED.format(pub=pub), "missing": None}
    guests = {}
    try:
        for name in ("good", "malformed", "missing"):
            if name in wanted:
                # The good guest hosts a service the manager places on it: the
                # manager reaches it over a backbone link (imagelib.Backbone).
                link = Backbone() if name == "good" and "mec_conpaas_node" in roles_in(
                    image) else None
                guests[name] = Guest(image, image.workdir, name, texts[name], backbone=link)
                guests[name].start()
        if floor_image is not None:
            guests["floor"] = Guest(floor_image, floor_image.workdir, "floor", settings(
                pub, master.guest_url, master.node_token, hostname="ap-floor"))
            guests["floor"].start()
        failed_before = request.session.testsfailed
        _LIVE.update(guests=guests, key=key, collected=set(), master=master)
        yield guests
        if request.session.testsfailed > failed_before:
            for g in guests.values():
                if g.proc and g.proc.poll() is None:
                    g.collect(key, "a test of this session failed")
    finally:
        _LIVE.clear()
        for g in guests.values():
            g.stop()


def hold(guests, key, master):
    """With MEC_CONPAAS_HOLD_S=N, when the session's first boot test fails,
    pause there up to N seconds with the guests, the manager and whatever the
    tests made (the placed service) as they are, so that what failed can be
    looked at live (a boot costs minutes of TCG; the artifacts are a
    snapshot).  How to log in and talk to the manager is written to
    ``hold.txt`` in the artifacts directory; deleting that file ends the hold."""
    seconds = int(os.environ.get("MEC_CONPAAS_HOLD_S") or 0)
    live = {n: g for n, g in guests.items() if g.proc and g.proc.poll() is None}
    if seconds <= 0 or not live:
        return
    path = os.path.join(artifacts_dir(), "hold.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"held {seconds} s from {time.strftime('%H:%M:%S')}; rm this file to end\n")
        for n, g in live.items():
            f.write(f"{n}: ssh -i {key} -p {g.ssh_port} -o StrictHostKeyChecking=no "
                    f"-o UserKnownHostsFile=/dev/null mec@127.0.0.1\n")
        f.write(f"manager: {master.url} (CA {getattr(master, 'ca_file', None)}, admin token "
                f"{master.admin_token}, log {master.dir}/manager.log)\n")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and os.path.exists(path):
        time.sleep(5)


# The fleet while it runs: a failing boot test keeps the guests' artifacts at once,
# not only at the end of the session (a run stopped midway kept nothing before).
_LIVE = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.failed and _LIVE and item.get_closest_marker("emulated_boot")):
        return
    for name, g in _LIVE["guests"].items():
        if name in _LIVE["collected"] or not g.proc or g.proc.poll() is not None:
            continue
        _LIVE["collected"].add(name)
        try:
            g.collect(_LIVE["key"], "%s failed" % item.nodeid)
        except Exception as e:  # keeping artifacts must not hide the failure
            print("artifacts of guest %s not kept: %s" % (name, e))
    if not _LIVE.get("held"):
        _LIVE["held"] = True
        hold(_LIVE["guests"], _LIVE["key"], _LIVE["master"])



@pytest.fixture(scope="session")
def booted(fleet, keypair):
    """The 'good' guest once its boot has finished (or the test fails, naming
    the jobs that hold it, with the console, units and journal kept)."""
    g = guest(fleet, "good")
    ssh = SSH(g, keypair[0])
    ssh.wait_boot_finished()
    return g, ssh


# The service the manager places on the booted node (tests/image/test_emulated_hosting.py),
# fetched again by a Wi-Fi station through the access point's endpoint
# (test_emulated_wifi.py).
SERVICE = "hello"


@pytest.fixture(scope="session")
def paas_service(image, booted, master):
    """A ``web`` service created through the real manager with no node named:
    placement puts it on the booted node (the only one up), whose node agent the
    manager reaches over the backbone link, and starts its instance there.
    ``(service view, node record, seconds from create to SUCCEEDED)``; deleted
    at the end of the session."""
    from mec_conpaas.cli.client import Client
    g, ssh = booted
    if "mec_conpaas_node" not in roles_in(image):
        pytest.skip(f"profile {image.manifest['profile']!r} has no node agent")
    node = master.wait_node_up("ap-test-1")
    assert node and node["state"] == "up", (node, master.log()[-2000:])
    # The master's side of the backbone: a route to the node's instance network
    # (where its agent's advertised address and its instances are) via the node.
    g.backbone.configure_guest(ssh)
    net = ipaddress.ip_network(node["allocation"]["instance_network"])
    # With a DHCP backbone the agent advertises its bridge's address: the one the
    # join moved it to, not the image's default (which the node no longer holds).
    assert ipaddress.ip_address(node["address"]) in net, (node["address"], net)
    g.backbone.route(net)
    client = Client(url=master.url, token=master.admin_token, ca_cert=master.ca_file)
    t0 = time.monotonic()
    op = client.wait(client.create_service("web", SERVICE)["operation"]["id"], timeout=900)
    created_s = time.monotonic() - t0
    svc = client.service(SERVICE)
    try:
        assert op["state"] == "SUCCEEDED", (op, svc, master.log()[-4000:])
        g.timings["service_created_s"] = round(created_s, 1)
        g.timings["service_active_after_poweron_s"] = round(time.monotonic() - g.t0, 1)
        yield svc, node, created_s
    finally:
        try:
            client.wait(client.delete_service(SERVICE, force=True)["operation"]["id"],
                        timeout=300)
        except Exception as e:  # the guest goes anyway; say why the delete did not
            print(f"deleting service {SERVICE}: {e}")
