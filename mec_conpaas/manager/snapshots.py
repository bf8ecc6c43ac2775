"""Copies of running instances' state directories, kept on the manager.

When a node dies its disk cannot be read any more, so the state a
re-placed instance starts with must have been copied while the node was
alive.  Every ``[manager] snapshot_interval`` seconds the manager asks each
running instance's node agent for the manifest of its state directory
(``GET /v1/instances/ID/state/manifest``); an unchanged manifest costs
nothing more, otherwise only the files that differ are exported
(``POST .../state/export``) and applied with ``statesync``, the code
migration uses.

On disk, per instance::

    $state_path/snapshots/SERVICE/INSTANCE/current -> g<N>   (a symlink)
    $state_path/snapshots/SERVICE/INSTANCE/g<N>/state/...     the copy
    $state_path/snapshots/SERVICE/INSTANCE/g<N>/snapshot.json  its manifest

A new snapshot is built in a new generation (the previous one hard-linked,
``cp -al``: no file is copied twice, and statesync replaces files by
renaming, never writing into a linked one), then ``current`` is switched
with one rename: a manager killed mid-copy leaves the last complete
snapshot in place.
"""
import json
import logging
import os
import shutil
import subprocess
import threading
import time

from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.agents.node import statesync
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope

LOG = logging.getLogger(__name__)
META = "snapshot.json"
# Generations are switched and removed, and read for a restore, under
# this lock: a restore never reads a generation being removed.
_LOCK = threading.Lock()


def state_bytes(manifest):
    """What a state directory weighs: the sum of its files' sizes."""
    return sum(int(meta[1]) for meta in manifest.values() if meta[0] == "f")


class Snapshots:

    def __init__(self, conf):
        self.conf = conf
        self.root = os.path.join(conf.state_path, "snapshots")
        self._too_big = {}  # instance -> size already logged as too big
        self._failing = set()  # instances whose last snapshot failed (logged)

    # -- the store -------------------------------------------------------
    def _dir(self, service_id, instance_id):
        return os.path.join(self.root, service_id, instance_id)

    def current(self, service_id, instance_id):
        """(directory holding the copy, its metadata), or (None, None)."""
        base = self._dir(service_id, instance_id)
        try:
            gen = os.path.join(base, os.readlink(os.path.join(base, "current")))
            with open(os.path.join(gen, META)) as f:
                return os.path.join(gen, "state"), json.load(f)
        except (OSError, ValueError):
            return None, None

    def apply(self, service_id, instance_id, remote, fetch, node=None):
        """Bring the instance's snapshot up to the ``remote`` manifest,
        getting the tar of the files it lacks from ``fetch(paths)``.
        Returns False, having copied nothing, when it already is."""
        state, meta = self.current(service_id, instance_id)
        base = meta["manifest"] if meta else {}
        if meta is not None and base == remote:
            return False
        paths = statesync.wanted(base, remote)
        data = fetch(paths)
        top = self._dir(service_id, instance_id)
        gen = "g%d" % time.time_ns()
        new = os.path.join(top, gen)
        os.makedirs(new)
        try:
            if state is not None:
                subprocess.run(["cp", "-al", state, os.path.join(new, "state")],
                               check=True, capture_output=True)
            else:
                os.makedirs(os.path.join(new, "state"))
            statesync.import_tar(os.path.join(new, "state"), data, remote)
            with open(os.path.join(new, META), "w") as f:
                json.dump({"manifest": remote, "taken_at": time.time(),
                           "bytes": state_bytes(remote), "files": len(paths),
                           "instance": instance_id, "node": node}, f)
            link = os.path.join(top, "current.tmp")
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(gen, link)
            with _LOCK:
                os.replace(link, os.path.join(top, "current"))
                self._drop_old(top, keep=gen)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        return True

    @staticmethod
    def _drop_old(top, keep):
        for entry in os.listdir(top):
            if entry.startswith("g") and entry != keep:
                shutil.rmtree(os.path.join(top, entry), ignore_errors=True)

    def archive(self, service_id, instance_id):
        """The snapshot as the whole-directory tar ``service stop`` saves
        and a driver's ``import_state`` puts into a held instance, and its
        metadata; (None, None) if there is none."""
        with _LOCK:
            state, meta = self.current(service_id, instance_id)
            if state is None:
                return None, None
            return statesync.archive(state), meta

    def move(self, service_id, old_id, new_id):
        """Hand a re-placed instance's snapshot to its replacement (its
        first own snapshot then copies only what changed); idempotent."""
        old, new = self._dir(service_id, old_id), self._dir(service_id, new_id)
        with _LOCK:
            if os.path.isdir(old) and not os.path.exists(new):
                os.rename(old, new)

    def prune(self):
        """Remove the snapshots of deleted services and instances, and
        generations a killed manager left half-made.  Services an
        operation holds are left alone: their instances are changing."""
        if not os.path.isdir(self.root):
            return []
        with session_scope() as s:
            held = set(s.scalars(select(models.Service.id).where(
                models.Service.operation_id.is_not(None))))
            keep = {}
            for sid, iid in s.execute(select(models.Instance.service_id,
                                             models.Instance.id).where(
                    models.Instance.service_id.is_not(None))):
                keep.setdefault(sid, set()).add(iid)
            services = set(s.scalars(select(models.Service.id)))
        removed = []
        with _LOCK:
            for sid in os.listdir(self.root):
                if sid in held:
                    continue
                path = os.path.join(self.root, sid)
                if sid not in services:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(sid)
                    continue
                for iid in os.listdir(path):
                    top = os.path.join(path, iid)
                    if iid not in keep.get(sid, ()):
                        shutil.rmtree(top, ignore_errors=True)
                        removed.append(iid)
                        continue
                    try:
                        self._drop_old(top, keep=os.readlink(
                            os.path.join(top, "current")))
                    except OSError:
                        pass  # no complete snapshot yet: the next one cleans
        return removed

    # -- talking to node agents -------------------------------------------
    def take(self, service_id, instance_id, ref):
        """Snapshot one instance; True if anything was copied."""
        # A read only: the base of a migration's delta push, which the node
        # agent keeps per served manifest, stays untouched.
        remote = ref.agent.state_manifest(instance_id, snapshot=True)
        size = state_bytes(remote)
        limit = self.conf.manager.snapshot_max_bytes
        if limit and size > limit:
            if self._too_big.get(instance_id) != size:
                LOG.warning("state of instance %s is %d bytes, over [manager] "
                            "snapshot_max_bytes (%d): not snapshotted; its last "
                            "snapshot that fitted is kept", instance_id, size, limit)
                self._too_big[instance_id] = size
            return False
        self._too_big.pop(instance_id, None)
        return self.apply(service_id, instance_id, remote,
                          lambda paths: ref.agent.state_export(instance_id, paths),
                          node=ref.name)

    def run_once(self, cluster):
        """One round: every ACTIVE instance of a RUNNING service that no
        operation holds, on an up node.  Returns the instances copied."""
        with session_scope() as s:
            up = {n.name: cluster.ref(n) for n in cluster.nodes(s, up_only=True)}
            targets = [(i.service_id, i.id, up[i.node_name]) for i in s.scalars(
                select(models.Instance).join(models.Service).where(
                    models.Instance.state == "ACTIVE",
                    models.Service.state == "RUNNING",
                    models.Service.operation_id.is_(None))
                .order_by(models.Instance.created_at)) if i.node_name in up]
        copied = []
        for sid, iid, ref in targets:
            try:
                if self.take(sid, iid, ref):
                    copied.append(iid)
                self._failing.discard(iid)
            except (exception.MecError, OSError, subprocess.CalledProcessError) as e:
                # Once per failure streak: a dying node fails every round.
                LOG.log(logging.DEBUG if iid in self._failing else logging.WARNING,
                        "snapshot of instance %s on %s failed (its last one is "
                        "kept): %s", iid, ref.name, getattr(e, "message", None) or e)
                self._failing.add(iid)
        self.prune()
        return copied
