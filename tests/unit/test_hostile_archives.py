"""Property: whatever a tenant's archive holds, unpacking it changes nothing
outside the directory it is unpacked into.

Hypothesis builds archives from the parts known attacks are made of (link
chains, hard links, '..', absolute names and targets, names that replace an
earlier link, long names, devices, FIFOs, setuid bits) next to a tree of
victims; each example unpacks one with ``bundles.extract`` or
``statesync.import_tar`` and compares the surrounding tree before and after.
"""
import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile

from hypothesis import HealthCheck
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from mec_conpaas import bundles
from mec_conpaas import exception
from mec_conpaas.agents.node import statesync

OUT = "@OUT@"  # stands for the victims' absolute directory
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

component = st.sampled_from(["a", "b", "victim", "victims", "..", ".", "", "L" * 200,
                             "x" * 256])
relpath = st.lists(component, min_size=1, max_size=4).map("/".join)
name = st.one_of(relpath, relpath.map(lambda p: "/" + p), relpath.map(lambda p: "./" + p))
target = st.one_of(relpath, st.sampled_from(["/", "/etc/passwd", OUT, OUT + "/victim",
                                             "../victim", "../../victims/file"]))
KINDS = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
         tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]
member = st.tuples(name, st.sampled_from(KINDS), target,
                   st.sampled_from([0o644, 0o755, 0o777, 0o4755, 0o2755, 0o1777]))
members = st.lists(member, min_size=1, max_size=8)

# The attack from the review, and its variants, as fixed examples.
CHAIN = [("a", tarfile.SYMTYPE, ".", 0o777), ("a/b", tarfile.SYMTYPE, "..", 0o777),
         ("a/b/victim", tarfile.REGTYPE, "", 0o644)]
CHAIN2 = [("a", tarfile.SYMTYPE, ".", 0o777), ("b", tarfile.SYMTYPE, "a/..", 0o777),
          ("b/victim", tarfile.REGTYPE, "", 0o644)]
REPLACE = [("a", tarfile.SYMTYPE, "b/..", 0o777), ("b", tarfile.SYMTYPE, ".", 0o777),
           ("a/victim", tarfile.REGTYPE, "", 0o644)]
HARD = [("l", tarfile.SYMTYPE, OUT + "/victim", 0o777),
        ("h", tarfile.LNKTYPE, "l", 0o644), ("h", tarfile.REGTYPE, "", 0o644)]


def build(spec, out):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for nm, kind, tgt, mode in spec:
            info = tarfile.TarInfo(nm)
            info.type = kind
            info.mode = mode
            info.linkname = tgt.replace(OUT, out)
            data = None
            if kind == tarfile.REGTYPE:
                data = io.BytesIO(b"evil")
                info.size = 4
            tar.addfile(info, data)
    return buf.getvalue()


def victims(top):
    """The tree around the scratch directory an attack would aim at."""
    out = os.path.join(top, "victims")
    os.makedirs(os.path.join(out, "dir"))
    for path in ("victim", "file", "dir/victim"):
        with open(os.path.join(out, path), "w") as f:
            f.write("precious")
    os.chmod(os.path.join(out, "victim"), 0o600)
    scratch = os.path.join(top, "scratch")
    os.mkdir(scratch)
    with open(os.path.join(scratch, "victim"), "w") as f:
        f.write("precious")
    return out, scratch


def snapshot(top, skip):
    """Everything about the tree but ``skip`` (and directory mtimes)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if os.path.abspath(dirpath) == skip:
            dirnames[:] = []
            continue
        for nm in dirnames + filenames:
            path = os.path.join(dirpath, nm)
            if path == skip:
                continue
            s = os.lstat(path)
            entry = (stat.S_IFMT(s.st_mode), s.st_mode & 0o7777, s.st_uid)
            if stat.S_ISREG(s.st_mode):  # a hard link to it shows in st_nlink
                with open(path, "rb") as f:
                    entry += (s.st_nlink, s.st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
            elif stat.S_ISLNK(s.st_mode):
                entry += (os.readlink(path),)
            out[os.path.relpath(path, top)] = entry
    return out


def assert_links_stay_inside(dest):
    real = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(dest):
        for nm in dirnames + filenames:
            path = os.path.join(dirpath, nm)
            if os.path.islink(path):
                assert os.path.commonpath([os.path.realpath(path), real]) == real, path


@SETTINGS
@given(members)
@example(CHAIN)
@example(CHAIN2)
@example(REPLACE)
@example(HARD)
def test_bundle_extract_stays_inside(spec):
    with tempfile.TemporaryDirectory() as top:
        out, scratch = victims(top)
        path = os.path.join(top, "b.tar.gz")
        with open(path, "wb") as f:
            f.write(gzip.compress(build([("run.sh", tarfile.REGTYPE, "", 0o755)] + spec,
                                        out)))
        dest = os.path.join(scratch, "app")
        before = snapshot(top, dest)
        try:
            bundles.extract(path, dest, 1 << 20)
        except exception.MecError:
            assert not os.path.exists(dest), "a refused bundle left files behind"
        else:
            assert_links_stay_inside(dest)
        assert snapshot(top, dest) == before


@SETTINGS
@given(members, st.booleans(),
       st.dictionaries(name, st.sampled_from([["d", 0, 0, 0o755], ["f", 4, 0, 0o644]]),
                       max_size=4))
@example(CHAIN, True, {})
@example([("via/victim", tarfile.REGTYPE, "", 0o644), ("up/x", tarfile.REGTYPE, "", 0o644)],
         True, {"via/dir": ["d", 0, 0, 0o755], "up/new": ["d", 0, 0, 0o755]})
def test_state_import_stays_inside(spec, with_manifest, manifest):
    with tempfile.TemporaryDirectory() as top:
        out, scratch = victims(top)
        root = os.path.join(scratch, "state")
        os.makedirs(os.path.join(root, "d"))
        with open(os.path.join(root, "d", "keep"), "w") as f:
            f.write("state")
        # The tenant's own links, as a running instance may leave them.
        os.symlink(out, os.path.join(root, "via"))
        os.symlink("..", os.path.join(root, "up"))
        os.symlink(out + "/victim", os.path.join(root, "victim"))
        before = snapshot(top, root)
        try:
            statesync.import_tar(root, build(spec, out),
                                 manifest if with_manifest else None)
        except exception.MecError:
            pass
        assert snapshot(top, root) == before
