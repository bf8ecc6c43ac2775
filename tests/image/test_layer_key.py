"""The package layer's key (image-builder/build.py) follows the package tasks'
own inputs: a role variable no package task reads leaves it alone (a cheap
rebuild from the cached layer), one they read changes it.  No image, no root."""

import hashlib
import os
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "image-builder"))
import build  # noqa: E402

pytest.importorskip("yaml")


def key(*extra_vars, profile="edge"):
    args = types.SimpleNamespace(profile=profile, mirror="http://deb.example/debian",
                                 version="t", work_dir="/nonexistent", out_dir="/nonexistent",
                                 disk_id="0000abcd", extra_vars=list(extra_vars),
                                 no_rootfs_cache=False)
    b = build.Builder(args)
    h = hashlib.sha256()
    for label, data in b.package_inputs():
        h.update(label.encode() + b"\0" + (data if isinstance(data, bytes) else data.encode()))
    return h.hexdigest(), b.result["package_layer_vars"]


def test_variable_no_package_task_reads_keeps_the_key():
    base, names = key()
    assert "wifi_ap_ssid" not in names and "mec_conpaas_node_bridge" not in names
    assert key("wifi_ap_ssid=another-ssid")[0] == base
    assert key('{"mec_conpaas_node_max_instances": 3, "wifi_ap_channel": 11}')[0] == base


def test_variable_a_package_task_reads_changes_the_key():
    base, names = key()
    # Read directly (a package list) and through a condition (libvirt's packages).
    assert {"__wifi_ap_packages", "mec_conpaas_node_container_backend"} <= set(names)
    assert key('{"__wifi_ap_packages": ["hostapd"]}')[0] != base
    assert key("mec_conpaas_node_container_backend=none")[0] != base
    # Read through another variable's value (the venv role's Debian Python packages).
    assert key("mec_conpaas_package_extras=node")[0] != base


def test_key_is_the_same_in_every_process():
    """Python salts str hashes per process: the closure must not leak set order."""
    import subprocess
    code = ("import sys; sys.path[:0] = [%r, %r]; import test_layer_key as t; "
            "print(t.key()[0])" % (os.path.dirname(os.path.abspath(__file__)),
                                   os.path.join(REPO, "image-builder")))
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)},
                           check=True).stdout.strip() for seed in (1, 2, 3)}
    assert keys == {key()[0]}


def test_profile_roles_are_inputs():
    assert key(profile="edge")[0] != key(profile="ci")[0]
