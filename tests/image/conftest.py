"""Fixtures for the image tests: they open a BUILT image (image-builder/build.py).

The image under test is MEC_CONPAAS_IMAGE (a NAME.img.xz, or a raw NAME.img
with NAME.manifest.json found through MEC_CONPAAS_MANIFEST or next to it), else
the newest image-builder/out/*.img.xz.  Without an image the tests are skipped,
unless MEC_CONPAAS_IMAGE_REQUIRED=1 (CI), where that is an error.

Everything mounted or attached here is read-only and released at the end.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imagelib import OUT  # noqa: E402
from imagelib import Image  # noqa: E402
from imagelib import Root  # noqa: E402
from imagelib import find_image  # noqa: E402
from imagelib import sh  # noqa: E402


@pytest.fixture(scope="session")
def image():
    artifact = find_image()
    workdir = tempfile.mkdtemp(prefix="mec-image-test-", dir=os.environ.get("MEC_CONPAAS_TEST_TMP"))
    try:
        if artifact.endswith(".xz"):
            base = artifact[:-len(".img.xz")]
            manifest_path = os.environ.get("MEC_CONPAAS_MANIFEST") or base + ".manifest.json"
            raw = os.path.join(workdir, os.path.basename(artifact)[:-3])
            with open(raw, "wb") as f:
                subprocess.run(["xz", "-dc", "-T0", artifact], stdout=f, check=True)
        else:
            base = artifact[:-len(".img")]
            manifest_path = os.environ.get("MEC_CONPAAS_MANIFEST") or base + ".manifest.json"
            if not os.path.exists(manifest_path):
                manifest_path = os.path.join(OUT, os.path.basename(base) + ".manifest.json")
            raw = artifact
        with open(manifest_path) as f:
            manifest = json.load(f)
        yield Image(artifact, raw, manifest, manifest_path, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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
