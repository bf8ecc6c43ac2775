"""The service base image as nova's LXC driver wants it, and its init.

nova's LXC driver (Debian 12's Zed) boots an instance by loop-mounting a
RAW ext4 image, without a partition table, at
``/var/lib/nova/instances/<uuid>/rootfs`` on the compute node and
starting ``/sbin/init`` inside.  It offers no way to pass an environment,
bind-mount a host directory or run a command, which is how the ``lxc``
driver starts the service agent.  So the image carries the service agent
itself (``/opt/mec-conpaas/agent.py``: a new agent is a new image, hence a
new glance image keyed by checksum) and an init that waits for the
instance's configuration, which the node agent writes into the mounted
rootfs from the host (see docs/openstack-driver.rst for why that and not
config drive, metadata or file injection), then becomes the service agent.
"""
import hashlib
import os
import shutil
import subprocess
import tempfile

from mec_conpaas.agents.node import containers

# Written by the node agent into the instance's rootfs (host side); read
# once by INIT.  Holds the service agent's environment, nothing secret: the
# agent secret goes to containers.AGENT_SECRET_FILE as with the lxc driver.
INSTANCE_CONFIG = "etc/mec-conpaas/instance.json"
INIT_LOG = "var/log/mec-init.log"

INIT = r'''#!/usr/bin/python3
# MEC-ConPaaS init for nova LXC instances (mec_conpaas/drivers/nova_image.py).
# Waits for the configuration the node agent writes into this rootfs from
# the host, then becomes the service agent (PID 1 stays the agent, which
# reaps orphans as it does under the lxc driver).
import json
import os
import time

CONFIG = "/%(config)s"
LOG = "/%(log)s"
t0 = time.monotonic()
while not os.path.exists(CONFIG):
    time.sleep(0.05)
with open(CONFIG) as f:
    config = json.load(f)
with open(LOG, "a") as f:
    f.write("configuration found after %%.2f s\n" %% (time.monotonic() - t0))
env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "HOME": "/root"}
env.update({k: str(v) for k, v in config.get("env", {}).items()})
os.execve("/usr/bin/python3", ["python3", "/opt/mec-conpaas/agent.py"], env)
''' % {"config": INSTANCE_CONFIG, "log": INIT_LOG}


def build_raw(base_dir, out_path, headroom_mb=96):
    """Write a raw ext4 image of ``base_dir`` plus the service agent and
    INIT to ``out_path``.  ``base_dir`` is only read
    (the shared base image must not change): its tree is copied to a
    scratch directory first, since ``mkfs.ext4 -d`` takes one tree."""
    if not os.path.isdir(base_dir):
        raise RuntimeError("no base service image at %s: build it first "
                           "(mec_conpaas.edge.image.build)" % base_dir)
    scratch = tempfile.mkdtemp(prefix="mec-nova-image-")
    try:
        root = os.path.join(scratch, "root")
        subprocess.run(["cp", "-a", base_dir, root], check=True)
        os.makedirs(os.path.join(root, "opt", "mec-conpaas"), exist_ok=True)
        shutil.copy(containers.SERVICE_AGENT,
                    os.path.join(root, "opt", "mec-conpaas", "agent.py"))
        os.makedirs(os.path.join(root, "etc", "mec-conpaas"), exist_ok=True)
        init = os.path.join(root, "sbin", "init")
        with open(init, "w") as f:
            f.write(INIT)
        os.chmod(init, 0o755)
        used = int(subprocess.run(["du", "-sm", root], check=True, capture_output=True,
                                  text=True).stdout.split()[0])
        tmp = out_path + ".tmp"
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-d", root, tmp,
                        "%dM" % (used + headroom_mb)], check=True, capture_output=True)
        os.replace(tmp, out_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def content_key(base_dir):
    """sha256 naming what goes into the image: the base image's build
    record, every path and size in it, the service agent and INIT.

    Not the raw file's checksum: ``mkfs.ext4 -d`` copies each file's ctime,
    which no copy can keep, so two builds of the same tree differ in bytes.
    A new agent or base image is a new key, hence a new glance image."""
    digest = hashlib.sha256()
    with open(os.path.join(base_dir, ".mec-conpaas-image"), "rb") as f:
        digest.update(f.read())
    for top, dirs, files in os.walk(base_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            digest.update(("%s %d\n" % (os.path.relpath(path, base_dir),
                                         os.lstat(path).st_size)).encode())
    with open(containers.SERVICE_AGENT, "rb") as f:
        digest.update(f.read())
    digest.update(INIT.encode())
    return digest.hexdigest()
