"""The base service image: a minimal Debian tree every instance overlays.

Built once with debootstrap from the host's configured Debian mirror and
cached; instances share it read-only as their overlayfs lower layer.
"""
import os
import re
import shutil
import subprocess
import time

DEFAULT_DIR = "/var/cache/mec-conpaas/images/base-bookworm"
PACKAGES = ["python3", "ca-certificates"]


def configured_mirror():
    for path in ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]:
        try:
            text = open(path).read()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or \
            re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm", text, re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def ready(path):
    return os.path.isfile(os.path.join(path, ".mec-conpaas-image"))


def build(path=DEFAULT_DIR, mirror=None, log=print):
    if ready(path):
        return path
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed: apt-get install debootstrap")
    tmp = path + ".building"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mirror = mirror or configured_mirror()
    log("building the base service image (debootstrap bookworm from %s)..." % mirror)
    t0 = time.monotonic()
    res = subprocess.run(["debootstrap", "--variant=minbase",
                          "--include=" + ",".join(PACKAGES), "bookworm", tmp, mirror],
                         capture_output=True, text=True)
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError("debootstrap failed:\n" + res.stdout[-2000:] + res.stderr[-2000:])
    finish(tmp, path, "debootstrap minbase bookworm %s +%s" % (mirror, ",".join(PACKAGES)))
    log("base image ready in %.0f s" % (time.monotonic() - t0))
    return path


def finish(tmp, path, origin):
    """Turn a bootstrapped Debian tree ``tmp`` into the base image at ``path``.

    Shared with image-builder/build.py, which bakes the image into SD-card
    images from its own cached debootstrap tree (a Pi must not need a mirror
    and minutes of debootstrap before it can host anything).
    """
    # Trim what a service never needs.
    for sub in ("var/cache/apt/archives", "usr/share/doc", "usr/share/man",
                "usr/share/locale"):
        shutil.rmtree(os.path.join(tmp, sub), ignore_errors=True)
        os.makedirs(os.path.join(tmp, sub), exist_ok=True)
    for d in ("srv/app", "var/lib/service", "opt/mec-conpaas", "run/mec"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    with open(os.path.join(tmp, ".mec-conpaas-image"), "w") as f:
        f.write(origin + "\n")
    os.replace(tmp, path)
