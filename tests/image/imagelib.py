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
import subprocess

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
