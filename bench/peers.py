"""Peers measured beside MEC-ConPaaS in the same run, on the same edge.

Both run the same app from the same base image
(``/var/cache/mec-conpaas/images/base-bookworm``): the bundle's ``wsgi.py``
served by Python's ``wsgiref`` on port 8080, its state directory in
``/srv/state``.

podman
    the base image imported once into a private podman store (``--root``
    under the bench's state directory, never the machine's own store);
    the container joins the access point's network namespace
    (``--network ns:``), so it has no veth or NAT of its own: if anything
    that favours the peer.  runc, not Debian's default crun, which refuses
    this machine's hybrid cgroup layout.  Migration is ``podman container checkpoint
    --export`` on one AP's store and ``restore --import`` on another's
    (CRIU).
lxc
    plain ``lxc-start`` of an overlay of the base image (a privileged
    container: ours are user-namespaced), one veth on the AP's bridge with
    a static address, the app as its init.

A peer that cannot run here is reported with the step that failed and its
error, never left out.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from mec_conpaas import bundles  # noqa: E402
from mec_conpaas.edge import loadgen  # noqa: E402
from mec_conpaas.edge.loadgen import ClientLoad as Load  # noqa: E402

SERVER = '''\
import os
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from socketserver import ThreadingMixIn

os.environ.setdefault("MEC_STATE_DIR", "/srv/state")
os.makedirs(os.environ["MEC_STATE_DIR"], exist_ok=True)
sys.path.insert(0, "/srv/app")
import wsgi  # noqa: E402


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


make_server("0.0.0.0", int(os.environ.get("PORT", "8080")), wsgi.application,
            server_class=Server, handler_class=Quiet).serve_forever()
'''


class PeerError(Exception):
    def __init__(self, step, detail):
        super().__init__("%s: %s" % (step, detail))
        self.step, self.detail = step, detail


def run(step, argv, timeout=300, **kw):
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PeerError(step, str(e)) from None
    if res.returncode:
        raise PeerError(step, "%s exited %d: %s" % (
            os.path.basename(argv[0]), res.returncode,
            (res.stderr or res.stdout).strip()[-1500:]))
    return res.stdout


def version(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True,
                              timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired) as e:
        return "not available: %s" % e


def app_dir(work, app=None, bundle=None):
    """/srv of the peer: the app (``wsgi.py`` text or a bundle) + server.py."""
    srv = os.path.join(work, "srv")
    os.makedirs(os.path.join(srv, "app"))
    os.makedirs(os.path.join(srv, "state"))
    if bundle:
        bundles.extract(bundle, os.path.join(srv, "app"), 10**8)
    else:
        with open(os.path.join(srv, "app", "wsgi.py"), "w") as f:
            f.write(app)
    with open(os.path.join(srv, "server.py"), "w") as f:
        f.write(SERVER)
    return srv


class Podman:
    """A podman store of its own per access point, under ``work``."""

    def __init__(self, edge, work):
        self.edge, self.work = edge, work
        self.image = "localhost/mec-base:bench"

    def cmd(self, ap, *args):
        root = os.path.join(self.work, "podman", ap)
        # podman refuses a runroot longer than 50 characters.
        self.runroot = getattr(self, "runroot", None) or tempfile.mkdtemp(
            prefix="mecpod-", dir="/run")
        return ["podman", "--root", os.path.join(root, "storage"),
                "--runroot", os.path.join(self.runroot, ap),
                "--tmpdir", os.path.join(root, "tmp"),
                "--cgroup-manager", "cgroupfs", "--events-backend", "none",
                # crun refuses this machine's hybrid cgroup v1/v2 layout; runc
                # takes it.
                "--runtime", "runc"] + list(args)

    def load_image(self, ap):
        tar = subprocess.Popen(["tar", "-C", self.edge.image_dir, "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            run("podman import of the base image on " + ap,
                self.cmd(ap, "import", "-", self.image), stdin=tar.stdout)
        finally:
            tar.stdout.close()
            tar.wait()

    def start(self, ap, name, srv, port=8080):
        """``podman run`` of the app in ``ap``'s network namespace."""
        run("podman run on " + ap, self.cmd(
            # Limits below this machine's hard ones (podman's defaults are
            # above them, and raising a limit is refused here).
            ap, "run", "-d", "--name", name, "--ulimit", "nofile=4096:4096",
            "--ulimit", "nproc=4096:4096", "--network",
            "ns:/run/netns/" + self.edge.net.netns(ap), "-e", "PORT=%d" % port,
            "-v", "%s:/srv" % srv, self.image, "/usr/bin/python3", "/srv/server.py"))

    def remove_all(self):
        for ap in self.edge.net.aps:
            if os.path.isdir(os.path.join(self.work, "podman", ap)):
                subprocess.run(self.cmd(ap, "rm", "-f", "-a", "-t", "0"),
                               capture_output=True, timeout=120)
                subprocess.run(self.cmd(ap, "system", "reset", "-f"),
                               capture_output=True, timeout=120)
        if getattr(self, "runroot", None):
            shutil.rmtree(self.runroot, ignore_errors=True)


def migrate(name, b, app, models, during_floor):
    """The peer's migration of ``app`` under the same users as ours."""
    if name != "podman":
        return {"error": "unknown peer %r (known: podman)" % name}
    edge = b.edge
    out = {"podman": version(["podman", "--version"]),
           "criu": version(["criu", "--version"]),
           "network": "the container joins the AP's network namespace (no veth/NAT)"}
    absent = [tool for tool in ("podman", "criu") if shutil.which(tool) is None]
    if absent:
        return dict(out, ran=False, failed_step="tools",
                    error="%s not installed: tools/install-deps.sh --bench installs "
                          "the peers' packages" % " and ".join(absent))
    check = subprocess.run(["criu", "check"], capture_output=True, text=True)
    out["criu_check"] = {"exit_code": check.returncode,
                         "output": (check.stderr or check.stdout).strip()[-800:]}
    work = tempfile.mkdtemp(prefix="peer-podman-", dir=edge.path())
    pm = Podman(edge, work)
    users = None
    try:
        srv = app_dir(work, app=app)
        port = 18080
        pm.load_image("ap-1")
        pm.start("ap-1", "peer-app", srv, port)
        common.wait_http_200("http://%s:%d/" % (edge.net.bridge_address("ap-1"), port),
                             edge, timeout=60)
        users = {m: Load(edge, "ap-1", port, interval=0.01, keepalive=k)
                 for m, k in models.items()}
        time.sleep(0.5)
        archive = os.path.join(work, "checkpoint.tar.gz")
        t0 = time.monotonic()
        run("podman container checkpoint --export on ap-1", pm.cmd(
            "ap-1", "container", "checkpoint", "--export", archive, "peer-app"))
        t1 = time.monotonic()
        pm.load_image("ap-3")
        t2 = time.monotonic()
        run("podman container restore --import on ap-3", pm.cmd(
            "ap-3", "container", "restore", "--import", archive))
        t3 = time.monotonic()
        time.sleep(0.5)
        during = {m: u.stop() for m, u in users.items()}
        users = None
        out.update(ran=True, checkpoint_ms=round(1000 * (t1 - t0), 1),
                   restore_ms=round(1000 * (t3 - t2), 1),
                   checkpoint_bytes=os.path.getsize(archive),
                   models={m: loadgen.summarize(r) for m, r in during.items()})
    except PeerError as e:
        out.update(ran=False, failed_step=e.step, error=e.detail)
    finally:
        if users:
            for u in users.values():
                try:
                    u.stop()
                except Exception:  # the peer's failure is already recorded
                    pass
        pm.remove_all()
        shutil.rmtree(work, ignore_errors=True)
    print("peer %s: %s" % (name, out.get("error") or "ran"), file=sys.stderr)
    return out


# -- provisioning: create to first HTTP 200 ---------------------------------
def podman_provision(b, bundle, rounds):
    """Seconds from ``podman run`` to the app's first 200, ``rounds`` times
    (the image imported once, before: a pulled image, as a peer would have)."""
    edge = b.edge
    work = tempfile.mkdtemp(prefix="peer-podman-", dir=edge.path())
    pm = Podman(edge, work)
    out = {"podman": version(["podman", "--version"]),
           "network": "the container joins the AP's network namespace (no veth/NAT)"}
    try:
        pm.load_image("ap-1")
        times = []
        for n in range(rounds):
            port = 18100 + n
            t0 = time.monotonic()
            srv = app_dir(os.path.join(work, "r%d" % n), bundle=bundle)
            pm.start("ap-1", "prov%d" % n, srv, port)
            t1 = common.wait_http_200("http://%s:%d/" % (
                edge.net.bridge_address("ap-1"), port), edge, timeout=60)
            times.append(round(t1 - t0, 3))
            run("podman rm", pm.cmd("ap-1", "rm", "-f", "-t", "0", "prov%d" % n))
        out.update(ran=True, all=times)
    except (PeerError, RuntimeError) as e:
        out.update(ran=False, error=str(e))
    finally:
        pm.remove_all()
        shutil.rmtree(work, ignore_errors=True)
    return out


LXC_CONFIG = """\
lxc.uts.name = {name}
lxc.rootfs.path = overlay:{lower}:{upper}
lxc.mount.auto = proc:mixed sys:ro cgroup:mixed
lxc.net.0.type = veth
lxc.net.0.link = mecbr0
lxc.net.0.flags = up
lxc.net.0.ipv4.address = {addr}/24
lxc.net.0.ipv4.gateway = {gateway}
lxc.init.cmd = /usr/bin/python3 /srv/server.py
lxc.environment = PORT=8080
lxc.mount.entry = {srv} srv none bind 0 0
lxc.apparmor.profile = unconfined
"""


def lxc_provision(b, bundle, rounds):
    """Seconds from creating an overlay of the base image to the app's first
    200 with plain ``lxc-start``, on ap-1's bridge, ``rounds`` times."""
    edge = b.edge
    work = tempfile.mkdtemp(prefix="peer-lxc-", dir=edge.path())
    out = {"lxc": version(["lxc-start", "--version"]),
           "container": "privileged (no user namespace), veth on the AP's bridge"}
    ns = ["ip", "netns", "exec", edge.net.netns("ap-1")]
    times = []
    try:
        for n in range(rounds):
            name = "mecpeer%d" % n
            addr = "10.250.1.%d" % (150 + n % 40)
            t0 = time.monotonic()
            base = os.path.join(work, name)
            upper = os.path.join(base, "upper")
            os.makedirs(upper)
            srv = app_dir(base, bundle=bundle)
            with open(os.path.join(base, "config"), "w") as f:
                f.write(LXC_CONFIG.format(name=name, lower=edge.image_dir, upper=upper,
                                          addr=addr, gateway="10.250.1.1", srv=srv))
            try:
                run("lxc-start", ns + ["lxc-start", "-n", name, "-P", work, "-f",
                                       os.path.join(base, "config"), "-d", "-l", "INFO",
                                       "-o", os.path.join(base, "log")])
                t1 = common.wait_http_200("http://%s:8080/" % addr, edge, timeout=60)
                times.append(round(t1 - t0, 3))
            finally:
                subprocess.run(ns + ["lxc-stop", "-n", name, "-P", work, "-k"],
                               capture_output=True, timeout=60)
        out.update(ran=True, all=times)
    except (PeerError, RuntimeError) as e:
        log = ""
        try:
            log = open(os.path.join(work, "mecpeer%d" % len(times), "log")).read()[-800:]
        except OSError:
            pass
        out.update(ran=False, error=str(e), log=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
