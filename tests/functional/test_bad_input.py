"""Every user mistake gets a 4xx that says what to fix, and leaves nothing
behind: no service row, no container, no stray bundle file."""
import gzip
import io
import os
import tarfile

import pytest

from mec_conpaas.cli import client as client_mod
from tests.functional.conftest import all_containers
from tests.functional.conftest import wait_op


def make_tgz(path, members, compress=True):
    """members: list of (TarInfo-modifier, data) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)
    return path


def file_member(name, data=b"#!/bin/sh\nsleep 1000\n", mode=0o755):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


RUN = file_member("run.sh")

BAD_BUNDLES = {
    "not-gzip": ([RUN], False, 400, "not gzip-compressed"),
    "absolute-path": ([RUN, file_member("/etc/cron.d/x")], True, 400, "absolute path"),
    "dotdot": ([RUN, file_member("../../etc/passwd")], True, 400, "'..'"),
    "symlink-out-abs": ([RUN, special("l", tarfile.SYMTYPE, "/etc/shadow")], True, 400,
                        "points outside"),
    "symlink-out-rel": ([RUN, special("d/l", tarfile.SYMTYPE, "../../x")], True, 400,
                        "points outside"),
    "hardlink-out": ([RUN, special("h", tarfile.LNKTYPE, "/etc/shadow")], True, 400,
                     "hard link"),
    "device": ([RUN, special("dev", tarfile.CHRTYPE)], True, 400, "device"),
    "fifo": ([RUN, special("pipe", tarfile.FIFOTYPE)], True, 400, "device or FIFO"),
    "setuid": ([RUN, file_member("su", mode=0o4755)], True, 400, "setuid"),
    "no-run-sh": ([file_member("init.sh")], True, 400, "no run.sh"),
    "bomb": ([RUN, file_member("zeros", b"\0" * (3 * 1024 * 1024))], True, 413,
             "unpacks to more than"),
}


@pytest.fixture
def clean_edge(edge, admin):
    yield
    assert admin.services() == [], "a refused call left a service behind"
    assert all_containers(edge) == {ap: [] for ap in edge.net.aps}
    # Refused uploads leave no file; deleted services take their bundle along.
    assert os.listdir(edge.path("master", "bundles")) == []


@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_bad_bundle_refused(tmp_path, admin, clean_edge, case):
    members, compress, status, words = BAD_BUNDLES[case]
    path = make_tgz(str(tmp_path / "app.tar.gz"), members, compress)
    with pytest.raises(client_mod.ApiError) as e:
        admin.create_service("generic", "bad", node="ap-1", bundle=path)
    assert e.value.status == status, e.value.message
    assert words in e.value.message


def test_gzip_that_is_not_tar(tmp_path, admin, clean_edge):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(gzip.compress(b"hello, I am not a tar archive" * 100))
    with pytest.raises(client_mod.ApiError) as e:
        admin.create_service("generic", "bad", node="ap-1", bundle=str(path))
    assert e.value.status == 400 and "not a valid gzip-compressed tar" in e.value.message


def test_bundle_over_size_limit(tmp_path, admin, clean_edge):
    path = make_tgz(str(tmp_path / "big.tar.gz"),
                    [RUN, file_member("noise", os.urandom(1536 * 1024))])
    with pytest.raises(client_mod.ApiError) as e:
        admin.create_service("generic", "bad", node="ap-1", bundle=path)
    assert e.value.status == 413 and "max_bundle_size" in e.value.message


def test_generic_without_bundle(admin, clean_edge):
    with pytest.raises(client_mod.ApiError) as e:
        admin.create_service("generic", "bad", node="ap-1")
    assert e.value.status == 400 and "--bundle" in e.value.message


@pytest.mark.parametrize("name", ["Shop", "1shop", "a" * 33, "sh_op", "", "shop!"])
def test_invalid_names(admin, clean_edge, name):
    with pytest.raises(client_mod.ApiError) as e:
        admin.create_service("web", name, node="ap-1")
    assert e.value.status == 400 and "invalid service name" in e.value.message


def test_unknown_type_node_and_counts(admin, clean_edge):
    cases = [
        (lambda: admin.create_service("php", "x", node="ap-1"), 400, "unknown service type"),
        (lambda: admin.create_service("web", "x", node="ap-9"), 404, "no node named 'ap-9'"),
        (lambda: admin.create_service("web", "x", node="ap-1", count=0), 400, "count >= 1"),
        (lambda: admin.create_service("web", "x", node="ap-1", count=50), 409,
         "free instance slots"),
        (lambda: admin.scale("ghost", 2), 404, "no service named 'ghost'"),
        (lambda: admin.migrate("ghost", "ap-2"), 404, "no service named 'ghost'"),
        (lambda: admin.delete_service("ghost"), 404, "no service named 'ghost'"),
    ]
    for call, status, words in cases:
        with pytest.raises(client_mod.ApiError) as e:
            call()
        assert e.value.status == status and words in e.value.message, e.value.message


def test_scale_and_migrate_arguments(edge, admin):
    wait_op(admin, admin.create_service("web", "cnt", node="ap-1"))
    try:
        for body, status, words in (({"count": -1}, 400, ">= 0"),
                                    ({"count": "two"}, 400, "integer"),
                                    ({"count": 50}, 409, "free slot"),
                                    ({}, 400, "integer")):
            with pytest.raises(client_mod.ApiError) as e:
                admin.request("POST", "/v1/services/cnt/scale", json=body)
            assert e.value.status == status and words in e.value.message
        for target, status, words in (("ap-9", 404, "no node named"),
                                      ("ap-1", 409, "already on ap-1")):
            with pytest.raises(client_mod.ApiError) as e:
                admin.migrate("cnt", target)
            assert e.value.status == status and words in e.value.message
        with pytest.raises(client_mod.ApiError) as e:
            admin.create_service("web", "cnt", node="ap-2")
        assert e.value.status == 409 and "exists already" in e.value.message
        svc = admin.service("cnt")
        assert svc["state"] == "RUNNING" and len(svc["instances"]) == 1
    finally:
        wait_op(admin, admin.delete_service("cnt"))
