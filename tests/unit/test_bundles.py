import gzip
import io
import os
import tarfile

import pytest

from mec_conpaas import bundles
from mec_conpaas import exception

LIMIT = 1024 * 1024


def tgz(tmp_path, members, name="b.tar.gz"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path = tmp_path / name
    path.write_bytes(gzip.compress(buf.getvalue()))
    return str(path)


def f(name, data=b"echo hi\n", mode=0o755):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def test_valid_generic_bundle(tmp_path):
    path = tgz(tmp_path, [f("./run.sh"), f("./init.sh"), f("lib/x.py", b"x=1"),
                          link("lib/y", "x.py"), link("lib/z", "lib/x.py", tarfile.LNKTYPE)])
    info = bundles.validate(path, "generic", LIMIT)
    assert "run.sh" in info.files and info.unpacked_size == 19
    assert len(info.sha256) == 64
    out = tmp_path / "out"
    bundles.extract(path, str(out), LIMIT)
    assert (out / "run.sh").read_bytes() == b"echo hi\n"
    assert os.readlink(out / "lib" / "y") == "x.py"
    assert (out / "lib" / "z").read_bytes() == b"x=1"


@pytest.mark.parametrize("members,words", [
    ([f("run.sh"), f("/abs")], "absolute path"),
    ([f("run.sh"), f("a/../../b")], "'..'"),
    ([f("run.sh"), link("l", "/etc/passwd")], "points outside"),
    ([f("run.sh"), link("a/l", "../../etc")], "points outside"),
    ([f("run.sh"), link("h", "missing", tarfile.LNKTYPE)], "hard link"),
    ([f("run.sh"), link("h", "../x", tarfile.LNKTYPE)], "hard link"),
    ([f("run.sh"), link("d", "", tarfile.CHRTYPE)], "device"),
    ([f("run.sh"), link("d", "", tarfile.BLKTYPE)], "device"),
    ([f("run.sh"), f("s", mode=0o2755)], "setgid"),
    ([f("init.sh")], "no run.sh"),
    # Links that are harmless one by one and reach outside together.
    ([f("run.sh"), link("a", "."), link("a/b", ".."), f("a/b/x")], "inside symlink 'a'"),
    ([f("run.sh"), link("a", "."), link("b", "a/..")], "points outside"),
    ([f("run.sh"), link("a", "d/e"), link("d/e", "../.."), f("a/x")], "points outside"),
    # A later member may not turn an accepted link into one that escapes.
    ([f("run.sh"), link("x", "d/.."), link("d", ".")], "appears twice"),
    ([f("run.sh"), link("run.sh", "/etc/passwd")], "appears twice"),
    ([f("run.sh"), link("a", "b"), link("b", "a/x/y")], "loop"),
    ([f("run.sh"), link("c0", "run.sh")] + [link("c%d" % (i + 1), "c%d" % i)
                                            for i in range(41)], "too many links"),
    ([f("run.sh"), link("l", "run.sh/x")], "which is a file"),
    ([f("run.sh"), f("run.sh/x")], "which is a file"),
    ([f("run.sh"), link("h", "l", tarfile.LNKTYPE)], "not a regular file"),
    ([f("run.sh"), link("l", "."), link("h", "l", tarfile.LNKTYPE)], "not a regular file"),
    ([f("run.sh"), f("x" * 256)], "name too long"),
    ([f("run.sh"), f(".//etc/cron.d/x")], "absolute path"),
    ([f("run.sh"), link("p", "", tarfile.FIFOTYPE)], "FIFO"),
])
def test_refused(tmp_path, members, words):
    path = tgz(tmp_path, members)
    with pytest.raises(exception.InvalidBundle) as e:
        bundles.validate(path, "generic", LIMIT)
    assert words in e.value.message
    if words != "no run.sh":
        # Extraction re-checks member safety and refuses too.
        with pytest.raises(exception.InvalidBundle):
            bundles.extract(path, str(tmp_path / "x"), LIMIT)


def test_gzip_bomb_stops_at_limit(tmp_path):
    path = tgz(tmp_path, [f("run.sh"), f("zeros", b"\0" * (4 * LIMIT))])
    assert os.path.getsize(path) < 20000
    with pytest.raises(exception.BundleTooLarge) as e:
        bundles.validate(path, "generic", LIMIT)
    assert e.value.status == 413


def test_compressed_size_limit(tmp_path):
    path = tmp_path / "big.tar.gz"
    path.write_bytes(b"\x1f\x8b" + os.urandom(LIMIT + 10))
    with pytest.raises(exception.BundleTooLarge):
        bundles.validate(str(path), "generic", LIMIT)


def test_not_gzip_and_corrupt(tmp_path):
    plain = tmp_path / "plain.tar"
    plain.write_bytes(b"x" * 100)
    with pytest.raises(exception.InvalidBundle, match="not gzip"):
        bundles.validate(str(plain), "generic", LIMIT)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(gzip.compress(b"not a tar at all" * 64))
    with pytest.raises(exception.InvalidBundle, match="not a valid"):
        bundles.validate(str(broken), "generic", LIMIT)


def test_web_bundle_needs_an_app(tmp_path):
    ok = tgz(tmp_path, [f("wsgi.py", b"def application(e, s): pass")], "ok.tar.gz")
    bundles.validate(ok, "web", LIMIT)
    static = tgz(tmp_path, [f("static/index.html", b"<p>")], "st.tar.gz")
    bundles.validate(static, "web", LIMIT)
    bad = tgz(tmp_path, [f("README")], "bad.tar.gz")
    with pytest.raises(exception.InvalidBundle, match="wsgi.py"):
        bundles.validate(bad, "web", LIMIT)


def test_member_count_limit(tmp_path):
    path = tgz(tmp_path, [f("run.sh")] + [f("d/%d" % i, b"") for i in range(30)])
    with pytest.raises(exception.InvalidBundle, match="more than 10 members"):
        bundles.validate(path, "generic", LIMIT, max_members=10)


def test_links_resolved_through_earlier_links(tmp_path):
    """Links into directories that come later, and hard links through a
    symlink, are fine: they resolve inside the bundle."""
    path = tgz(tmp_path, [f("run.sh"), link("lib/cur", "../v2/lib"),
                          f("v2/lib/m.py", b"m=1"), link("h", "lib/cur/m.py", tarfile.LNKTYPE)])
    bundles.validate(path, "generic", LIMIT)
    out = tmp_path / "out"
    bundles.extract(path, str(out), LIMIT, owner=(65534, 65534))
    assert (out / "lib" / "cur" / "m.py").read_bytes() == b"m=1"
    assert os.stat(out / "h").st_ino == os.stat(out / "v2" / "lib" / "m.py").st_ino
    # The 'data' filter's modes and the owner asked for, on every entry.
    for entry in [out, *out.rglob("*")]:
        st = os.lstat(entry)
        assert (st.st_uid, st.st_gid) == (65534, 65534)
        if not entry.is_symlink():
            assert st.st_mode & 0o7022 == 0


def test_extract_needs_an_empty_dest_and_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine").write_text("keep")
    good = tgz(tmp_path, [f("run.sh")], "good.tar.gz")
    with pytest.raises(exception.Conflict, match="not empty"):
        bundles.extract(good, str(out), LIMIT)
    assert (out / "mine").read_text() == "keep"
    bad = tgz(tmp_path, [f("run.sh"), f("lib/a.py"), link("lib/a.py", "x")])
    with pytest.raises(exception.InvalidBundle, match="appears twice"):
        bundles.extract(bad, str(tmp_path / "new"), LIMIT)
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"),
                    reason="this Python predates tarfile's extraction filters")
def test_data_mode_is_the_standard_librarys_data_filter():
    """Nodes run Debian 12's Python 3.11.2 (no filters), so bundles carry
    their own copy of the 'data' filter's mode rule: it must agree with the
    standard library's for every mode a tar header can hold."""
    for kind in (tarfile.REGTYPE, tarfile.LNKTYPE):
        for mode in range(0o10000):
            info = tarfile.TarInfo("f")
            info.type, info.mode = kind, mode
            if kind == tarfile.LNKTYPE:
                info.linkname = "g"
            expected = tarfile.data_filter(info, "/nonexistent").mode
            assert bundles.data_mode(mode) == expected, oct(mode)


def test_flink_bundle_needs_a_job(tmp_path):
    with pytest.raises(exception.InvalidBundle, match="job.py"):
        bundles.validate(tgz(tmp_path, [f("README", b"no job")]), "flink", LIMIT)
    assert bundles.validate(tgz(tmp_path, [f("app.jar", b"PK")], "j.tar.gz"),
                            "flink", LIMIT).files == ["app.jar"]
    # A jar below the top is not the job.
    with pytest.raises(exception.InvalidBundle):
        bundles.validate(tgz(tmp_path, [f("lib/app.jar", b"PK")], "k.tar.gz"),
                         "flink", LIMIT)


def test_a_bare_flink_job_is_packed_as_job_py(tmp_path):
    from mec_conpaas import flink_bundle
    src = tmp_path / "faces.py"
    src.write_text("print('job')\n")
    path = tmp_path / "packed.tar.gz"
    path.write_bytes(flink_bundle.pack(str(src)).read())
    assert bundles.validate(str(path), "flink", LIMIT).files == ["job.py"]
