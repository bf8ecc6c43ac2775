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

import json
import os
import subprocess
import sys
import tempfile

PLATFORMS = ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64",
             "linux_aarch64"]
PYVER = os.environ.get("MEC_CONPAAS_IMAGE_PYVER", "3.11")


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
    # 1. The project itself (pure Python) + its requirement list.
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(pip + ["wheel", *quiet, "--no-deps", "--wheel-dir", wheel_dir, source],
                       check=True)
        report = os.path.join(tmp, "report.json")
        subprocess.run(pip + ["install", "--quiet", "--dry-run", "--ignore-installed",
                              "--report", report, source], check=True)
        with open(report) as f:
            items = json.load(f)["install"]
        # Everything but the project itself (its wheel is built above).
        reqs = [f"{it['metadata']['name']}=={it['metadata']['version']}" for it in items
                if it.get("download_info", {}).get("dir_info") is None]
    # 2. Its dependencies as arm64 / pure-Python wheels.
    plat = [x for p in PLATFORMS for x in ("--platform", p)]
    subprocess.run(pip + ["download", *quiet, "--only-binary=:all:", *plat,
                          "--python-version", PYVER, "--implementation", "cp",
                          "--dest", wheel_dir, *reqs], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
