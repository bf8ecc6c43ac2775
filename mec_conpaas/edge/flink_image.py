"""The flink image variant: the base service image plus a Java runtime,
Apache Flink (the ``apache-flink`` distribution, which ships the Flink
runtime jars and scripts) and OpenCV for the face-recognition workload.

The base image is shared by every instance and must not change, so the
variant is a copy of it under its own directory, cached the same way
(a marker file written last, built under ``.building`` and renamed).
Its Python packages live in a venv at ``/opt/flink`` so that the base
image's ``python3`` (the service agent's) stays as it is.
"""
import os
import shutil
import subprocess
import time

from mec_conpaas.edge import image as base_image

DEFAULT_DIR = "/var/cache/mec-conpaas/images/flink-bookworm"
APT_PACKAGES = ["openjdk-17-jre-headless", "python3-venv", "python3-pip"]


def pip_packages():
    """The ``flink`` extra of setup.cfg (one list for the image and for
    the host's .venv-flink)."""
    import importlib.metadata
    return [r.split(";")[0].strip() for r in importlib.metadata.requires("mec-conpaas")
            if 'extra == "flink"' in r]


VENV = "/opt/flink"
FLINK_HOME = VENV + "/lib/python3.11/site-packages/pyflink"


def ready(path):
    return base_image.ready(path)


def _chroot(root, argv, what, env=None):
    res = subprocess.run(["chroot", root] + argv, capture_output=True, text=True,
                         env=dict({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                   "DEBIAN_FRONTEND": "noninteractive",
                                   "HOME": "/root", "LANG": "C.UTF-8"}, **(env or {})))
    if res.returncode != 0:
        raise RuntimeError("%s failed (exit %d):\n%s%s" % (
            what, res.returncode, res.stdout[-3000:], res.stderr[-3000:]))
    return res.stdout


def build(path=DEFAULT_DIR, base=base_image.DEFAULT_DIR, log=print):
    """Build the variant from the (already built) base image; returns its path.

    Takes minutes (apt + pip download ~600 MB); afterwards it is cached."""
    if ready(path):
        return path
    base_image.build(base, log=log)
    tmp = path + ".building"
    if os.path.exists(tmp):
        _unmount_all(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    log("building the flink image variant from %s..." % base)
    t0 = time.monotonic()
    subprocess.run(["cp", "-a", "--reflink=auto", base, tmp], check=True)
    os.unlink(os.path.join(tmp, ".mec-conpaas-image"))
    mounts = []
    try:
        for src, fstype in (("/proc", "proc"), ("/sys", "sysfs"), ("/dev", None)):
            target = os.path.join(tmp, src.lstrip("/"))
            os.makedirs(target, exist_ok=True)
            if fstype:
                subprocess.run(["mount", "-t", fstype, fstype, target], check=True)
            else:
                subprocess.run(["mount", "--bind", src, target], check=True)
            mounts.append(target)
        # The host's resolver and CA bundle (it may trust a proxy's CA) for
        # the downloads only; the image keeps its own.
        for f in ("etc/resolv.conf",):
            shutil.copy("/" + f, os.path.join(tmp, f))
        cert = os.path.join(tmp, "tmp", "host-ca.crt")
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", cert)
        _chroot(tmp, ["apt-get", "update"], "apt-get update in the flink image")
        _chroot(tmp, ["apt-get", "install", "-y", "--no-install-recommends"]
                + APT_PACKAGES, "installing %s" % ", ".join(APT_PACKAGES))
        _chroot(tmp, ["python3", "-m", "venv", VENV], "creating the flink venv")
        _chroot(tmp, [VENV + "/bin/pip", "install", "--no-cache-dir",
                      "--cert", "/tmp/host-ca.crt", "--disable-pip-version-check"]
                + pip_packages(), "pip install %s" % " ".join(pip_packages()),
                # pip runs pip again for sdists' setup_requires (avro-python3)
                env={"PIP_CERT": "/tmp/host-ca.crt"})
        _chroot(tmp, ["apt-get", "clean"], "apt-get clean")
        os.unlink(cert)
    finally:
        _unmount_all(tmp)
    for sub in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        shutil.rmtree(os.path.join(tmp, sub), ignore_errors=True)
        os.makedirs(os.path.join(tmp, sub), exist_ok=True)
    with open(os.path.join(tmp, "etc", "resolv.conf"), "w"):
        pass
    with open(os.path.join(tmp, ".mec-conpaas-image"), "w") as f:
        f.write("flink variant of %s +%s +%s\n" % (
            base, ",".join(APT_PACKAGES), ",".join(pip_packages())))
    os.replace(tmp, path)
    log("flink image ready in %.0f s (%s)" % (time.monotonic() - t0, size(path)))
    return path


def _unmount_all(root):
    root = os.path.realpath(root)
    with open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f]
    for t in sorted((t for t in targets if t == root or t.startswith(root + "/")),
                    key=len, reverse=True):
        subprocess.run(["umount", "-l", t], capture_output=True)


def size(path):
    out = subprocess.run(["du", "-sh", path], capture_output=True, text=True).stdout
    return out.split()[0] if out else "?"


def main():
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default=DEFAULT_DIR)
    p.add_argument("--base", default=base_image.DEFAULT_DIR)
    p.add_argument("--requirements", action="store_true",
                   help="print the pip requirements (the 'flink' extra) and exit")
    args = p.parse_args()
    if args.requirements:
        print(" ".join(pip_packages()))
        return
    build(args.path, args.base)


if __name__ == "__main__":
    main()
