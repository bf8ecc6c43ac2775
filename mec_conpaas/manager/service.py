"""The manager daemon: store, driver, engine, API and the node monitor."""
import io
import logging
import os
import tarfile
import threading

from mec_conpaas import drivers
from mec_conpaas.db import session as db
from mec_conpaas.manager import cluster as cluster_mod
from mec_conpaas.manager import engine as engine_mod
from mec_conpaas.manager import farcloud
from mec_conpaas.manager import liveness
from mec_conpaas.manager import mobility
from mec_conpaas.manager import nodeloss
from mec_conpaas.manager import qos
from mec_conpaas.manager import services
from mec_conpaas.manager import snapshots
from mec_conpaas.manager import workflows

LOG = logging.getLogger(__name__)
SAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "samples",
                      "webcounter")


def build_sample_bundle(src=SAMPLE):
    """Deterministic .tar.gz of a sample app (same bytes, same sha256)."""
    buf = io.BytesIO()
    import gzip
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            for name in sorted(os.listdir(src)):
                if name.startswith(".") or name == "__pycache__":
                    continue
                info = tar.gettarinfo(os.path.join(src, name), arcname=name)
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                with open(os.path.join(src, name), "rb") as f:
                    tar.addfile(info, f)
    return buf.getvalue()


class Manager:

    def __init__(self, conf):
        self.conf = conf
        # First: a driver that cannot be loaded stops the start with
        # nothing changed.
        self.driver = drivers.load(conf.manager.driver, conf)
        if conf.database.auto_migrate:
            db.upgrade()
        self.cluster = cluster_mod.Cluster(conf, self.driver)
        self.services = services.Services(self.cluster)
        self.engine = engine_mod.Engine(workflows.all_workflows(self.cluster), conf)
        self.sweeper = workflows.Sweeper(self.cluster)
        self.nodeloss = nodeloss.NodeLoss(self.cluster, self.engine)
        self.qos = qos.Loop(self.cluster, self.engine, self.services)
        self.snapshots = snapshots.Snapshots(conf)
        self.mobility = mobility.Mobility(self.cluster, self.services, self.engine)
        self.farcloud = farcloud.FarCloud(self.cluster, self.services, self.engine,
                                          self.mobility)
        self.liveness = liveness.Receiver(conf)  # its own process
        self._sample = None
        self.stop = threading.Event()
        self._sweep_now = threading.Event()

    def sample_bundle(self):
        if self._sample is None:
            self._sample = build_sample_bundle()
        return self._sample

    def monitor(self):
        interval = max(1, self.conf.manager.node_heartbeat_timeout // 3)
        while not self.stop.wait(interval):
            try:
                self.cluster.mark_down_nodes()
                self.nodeloss.check()
                self.farcloud.check()
            except Exception:
                LOG.exception("node monitor")

    def recover(self):
        """Resume unfinished operations, then sweep the edge periodically."""
        resumed = self.engine.resume_all()
        if resumed:
            LOG.warning("resumed %d operation(s)", len(resumed))
        threading.Thread(target=self.sweep_loop, daemon=True).start()
        threading.Thread(target=self.snapshot_loop, daemon=True).start()
        threading.Thread(target=self.qos.run, daemon=True).start()
        threading.Thread(target=self.mobility.loop, args=(self.stop,),
                         daemon=True).start()

    def snapshot_loop(self):
        """Copies of instances' state for when their node is lost: only
        while something would use them."""
        opts = self.conf.manager
        while not self.stop.wait(opts.snapshot_interval or 60):
            if not (opts.snapshot_interval and opts.node_lost_grace):
                continue
            try:
                self.snapshots.run_once(self.cluster)
            except Exception:
                LOG.exception("snapshots")

    def sweep_loop(self):
        # The first sweep waits for node agents to heartbeat again after a
        # restart: only up nodes are swept.
        opts = self.conf.manager
        wait = min(opts.orphan_sweep_interval, opts.node_heartbeat_timeout)
        while True:
            self._sweep_now.wait(wait)
            self._sweep_now.clear()
            if self.stop.is_set():
                return
            wait = opts.orphan_sweep_interval
            try:
                removed = self.sweeper.sweep()
                if removed:
                    LOG.warning("sweep removed %d leftover instance(s)/"
                                "container(s): %s", len(removed), ", ".join(removed))
            except Exception:
                LOG.exception("sweep")

    def sweep_soon(self):
        """Sweep now rather than at the next interval: a node drain waits
        for what the sweep removes there (an instance its delete left while
        the node did not answer)."""
        self._sweep_now.set()

    def serve(self):
        import waitress

        from mec_conpaas.api import app as app_mod
        threading.Thread(target=self.monitor, daemon=True).start()
        self.liveness.serve(self.stop)  # the cheap heartbeat path
        if self.conf.enrollment.manage_routes:  # the master's own routes
            from mec_conpaas.manager import allocation
            threading.Thread(target=allocation.route_loop, daemon=True,
                             args=(self.conf, self.stop)).start()
        self.recover()
        opts = self.conf.api
        if self.conf.tls.cert_file:  # HTTPS (manager/tls.py): waitress has no TLS
            from mec_conpaas.manager import tls
            return tls.serve(self.conf, app_mod.create_app(self))
        LOG.info("manager API on %s:%s", opts.bind_host, opts.bind_port)
        waitress.serve(app_mod.create_app(self), host=opts.bind_host,
                       port=opts.bind_port, threads=opts.threads, ident=None,
                       connection_limit=opts.connection_limit,
                       # poll() where select() would stop the server at file
                       # descriptor 1024 (about a thousand node agents).
                       asyncore_use_poll=opts.use_poll,
                       channel_timeout=300)
