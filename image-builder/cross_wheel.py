#!/usr/bin/env python3
"""Stand-in for `python -m pip wheel ...` used by roles/mec_conpaas_package when
the target is an arm64 image built on an x86-64 controller.

The role's wheelhouse task runs (on the controller):
    PYTHON -m pip wheel --quiet --wheel-dir DIR SOURCE[extras]
build.py points mec_conpaas_package_controller_python at this script, which
builds the project's own wheel (pure Python) and *downloads* the dependencies
as wheels for the image's platform (manylinux aarch64, CPython 3.11) instead
of building them for the controller's.  Anything without such a wheel fails
loudly here, not later inside the image.
"""

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

PLATFORMS = ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64",
             "linux_aarch64"]
PYVER = os.environ.get("MEC_CONPAAS_IMAGE_PYVER", "3.11")
# Requirements the image takes from Debian packages instead (roles/mec_conpaas_package
# installs them and makes the venv see the system site packages), space separated
# distribution names, e.g. "libvirt-python" (no aarch64 wheel on PyPI).
SYSTEM_REQS = {re.sub(r"[-_.]+", "-", n).lower()
               for n in os.environ.get("MEC_CONPAAS_SYSTEM_REQUIREMENTS", "").split()}


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_requirements(wheel, extras):
    """Requires-Dist lines of WHEEL that belong to one of EXTRAS (marker `extra == ...`)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    reqs = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req, _, marker = line[len("Requires-Dist:"):].partition(";")
        m = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if m and norm(m.group(1)) in extras:
            reqs.append(req.strip())
    return reqs


def main(argv):
    if argv[:3] != ["-m", "pip", "wheel"]:
        # Anything else (the role may probe the interpreter): the real python.
        os.execv(sys.executable, [sys.executable] + argv)
    args = argv[3:]
    wheel_dir, source, passthrough = None, None, []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--wheel-dir", "-w"):
            wheel_dir = args[i + 1]
            i += 2
            continue
        if a.startswith("-"):
            passthrough.append(a)
        else:
            source = a
        i += 1
    if not wheel_dir or not source:
        sys.exit(f"cross_wheel.py: cannot parse {argv}")
    os.makedirs(wheel_dir, exist_ok=True)
    quiet = ["--quiet"] if "--quiet" in passthrough else []
    pip = [sys.executable, "-m", "pip"]
    # SOURCE[extra,...]: the extras' requirements are resolved separately, so that
    # the ones the image takes from Debian (SYSTEM_REQS) are left out.
    m = re.fullmatch(r"(.*?)(?:\[([^\]]*)\])?", source)
    source, extras = m.group(1), {norm(e) for e in (m.group(2) or "").split(",") if e.strip()}
    # 1. The project itself (pure Python) + its requirement list.
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(pip + ["wheel", *quiet, "--no-deps", "--wheel-dir", tmp, source],
                       check=True)
        wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
        subprocess.run(["cp", wheel, wheel_dir], check=True)
        wanted = [r for r in extra_requirements(wheel, extras)
                  if norm(re.split(r"[\s<>=!~\[;(]", r, maxsplit=1)[0]) not in SYSTEM_REQS]
        report = os.path.join(tmp, "report.json")
        subprocess.run(pip + ["install", "--quiet", "--dry-run", "--ignore-installed",
                              "--report", report, wheel, *wanted], check=True)
        with open(report) as f:
            items = json.load(f)["install"]
        # Everything but the project itself (its wheel is built above).
        reqs = [f"{it['metadata']['name']}=={it['metadata']['version']}" for it in items
                if norm(it["metadata"]["name"]) != norm(os.path.basename(wheel).split("-")[0])]
    # 2. Its dependencies as arm64 / pure-Python wheels.
    plat = [x for p in PLATFORMS for x in ("--platform", p)]
    subprocess.run(pip + ["download", *quiet, "--only-binary=:all:", *plat,
                          "--python-version", PYVER, "--implementation", "cp",
                          "--dest", wheel_dir, *reqs], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
