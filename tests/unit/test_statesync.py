import io
import os
import shutil
import tarfile

import pytest

from mec_conpaas import exception
from mec_conpaas.agents.node import statesync


def test_bulk_then_final_copy(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "d").mkdir(parents=True)
    dst.mkdir()
    (src / "a").write_text("one")
    (src / "d" / "b").write_text("two")
    os.symlink("a", src / "l")
    remote = statesync.manifest(str(src))
    paths = statesync.wanted(statesync.manifest(str(dst)), remote)
    assert paths == ["a", "d/b", "l"]
    statesync.import_tar(str(dst), statesync.export_tar(str(src), paths), remote)
    assert (dst / "d" / "b").read_text() == "two" and os.readlink(dst / "l") == "a"
    assert statesync.wanted(statesync.manifest(str(dst)), remote) == []
    # Final copy: one change, one deletion, one new file.
    (src / "a").write_text("ONE!")
    (src / "d" / "b").unlink()
    (src / "c").write_text("three")
    remote = statesync.manifest(str(src))
    paths = statesync.wanted(statesync.manifest(str(dst)), remote)
    assert paths == ["a", "c"]
    statesync.import_tar(str(dst), statesync.export_tar(str(src), paths), remote)
    assert (dst / "a").read_text() == "ONE!" and not (dst / "d" / "b").exists()
    assert statesync.manifest(str(dst)) == statesync.manifest(str(src))


def test_delta_push_carries_its_manifest(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "keep").write_text("k")
    (src / "gone").write_text("g")
    base = statesync.manifest(str(src))
    statesync.import_tar(str(dst), statesync.export_tar(str(src), sorted(base)), base)
    (src / "gone").unlink()
    (src / "new").write_text("n")
    current = statesync.manifest(str(src))
    paths = statesync.wanted(base, current)
    assert paths == ["new"]
    statesync.import_tar(str(dst), statesync.export_tar(str(src), paths,
                                                        with_manifest=current))
    assert sorted(os.listdir(dst)) == ["keep", "new"]


def test_precopy_round_moves_the_sources_changes_and_keeps_the_targets(tmp_path):
    """A round after the bulk copy compares against the manifest pulled
    last: the source's new and changed files and its deletions move; the
    files the target's app wrote since (its own address, a new file) stay,
    and so does a file only the target has, which a comparison with the
    target's files would delete."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for name in ("address", "journal", "old", "data"):
        (src / name).write_text("source " + name)
    pulls = statesync.Pulls(str(tmp_path / "pulls"))
    assert pulls.last("new-id", "old-id") is None  # the bulk: compare files
    bulk = statesync.manifest(str(src))
    statesync.import_tar(str(dst), statesync.export_tar(
        str(src), statesync.wanted(statesync.manifest(str(dst)), bulk)), bulk)
    pulls.remember("new-id", "old-id", bulk)
    # The target's app starts and writes; the source keeps serving.
    (dst / "address").write_text("target address")
    (dst / "pid").write_text("42")
    (src / "journal").write_text("source journal, one more line")
    (src / "old").unlink()
    (src / "fresh").write_text("source fresh")
    last = pulls.last("new-id", "old-id")
    assert last == bulk and pulls.last("new-id", "another-source") is None
    remote = statesync.manifest(str(src))
    paths = statesync.wanted(last, remote)
    assert paths == ["fresh", "journal"]
    statesync.import_tar(str(dst), statesync.export_tar(str(src), paths), remote,
                         base=last)
    pulls.remember("new-id", "old-id", remote)
    assert {p.name: p.read_text() for p in dst.iterdir()} == {
        "address": "target address", "pid": "42", "data": "source data",
        "journal": "source journal, one more line", "fresh": "source fresh"}
    # A record that is not a manifest is refused, not used as a base.
    (tmp_path / "pulls" / "new-id.json").write_text('{"source": "old-id", '
                                                    '"manifest": {"a": "b"}}')
    with pytest.raises(exception.BadRequest):
        pulls.last("new-id", "old-id")
    pulls.forget("new-id")
    assert pulls.last("new-id", "old-id") is None


def test_links_are_copied_as_links_never_followed(tmp_path):
    """A tenant's state with a link to /etc and a linked directory: the
    source reads nothing through them, the target writes nothing through
    its own, and deletions remove links, not what they point to."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("node secret")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    os.symlink("/etc", src / "etc")
    os.symlink(str(outside), src / "data")
    (src / "real").mkdir()
    (src / "real" / "f").write_text("state")
    remote = statesync.manifest(str(src))
    assert remote["etc"] == ["l", "/etc", 0, 0] and remote["data"][0] == "l"
    assert sorted(remote) == ["data", "etc", "real", "real/f"]
    # A peer asking for paths through the links gets the links alone.
    tar = statesync.export_tar(str(src), ["etc/passwd", "data/secret", "etc", "data",
                                          "real/f", "../outside/secret", "/etc/passwd"])
    assert b"node secret" not in tar and b"root:" not in tar
    # The target's own links (left by its instance) are not written through.
    os.symlink(str(outside), dst / "real")
    os.symlink(str(outside), dst / "stale")
    before = sorted(os.listdir(outside))
    statesync.import_tar(str(dst), tar, remote)
    assert sorted(os.listdir(outside)) == before
    assert (outside / "secret").read_text() == "node secret"
    assert os.readlink(dst / "etc") == "/etc" and os.readlink(dst / "data") == str(outside)
    assert not (dst / "real").is_symlink() and (dst / "real" / "f").read_text() == "state"
    assert not os.path.lexists(dst / "stale")
    assert statesync.manifest(str(dst)) == remote


def test_hostile_archive_and_manifest_write_nothing_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "state"
    root.mkdir()
    os.symlink(str(outside), root / "via")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("../escape", "/abs", "via/x", "via/../../escape2"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        dev = tarfile.TarInfo("dev")
        dev.type = tarfile.CHRTYPE
        tar.addfile(dev)
    statesync.import_tar(str(root), buf.getvalue(),
                         {"via": ["d", 0, 0, 0o755], "via/y": ["d", 0, 0, 0o755],
                          "/tmp/z": ["d", 0, 0, 0o755], "via/x": ["f", 4, 0, 0o644]})
    assert os.listdir(outside) == [] and not (tmp_path / "escape").exists()
    # The link 'via' became the directory the manifest says it is.
    assert sorted(os.listdir(root)) == ["via"] and not (root / "via").is_symlink()
    assert sorted(os.listdir(root / "via")) == ["x", "y"]
    with pytest.raises(exception.BadRequest, match="manifest"):
        statesync.import_tar(str(root), statesync.export_tar(str(root), []), {"a": "f"})


def _source_with_files(tmp_path, prefix, count, data):
    """tmp_path/src with ``count`` files ``PREFIX<n>`` (the prefix names
    their directory), and an empty tmp_path/dst."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / os.path.dirname(prefix)).mkdir(parents=True)
    dst.mkdir()
    for n in range(count):
        (src / ("%s%d" % (prefix, n))).write_bytes(data)
    return src, dst


def test_bulk_copy_in_batches_then_nothing_left_to_copy(tmp_path):
    """A bulk copy in batches (bounded memory) keeps the source's mtimes to
    the nanosecond, so a pre-copy round after it finds nothing to move;
    deletions wait for the last batch."""
    src, dst = _source_with_files(tmp_path, "d/f", 5, b"x" * 300)
    (dst / "gone").write_text("old")
    remote = statesync.manifest(str(src))
    paths = statesync.wanted(statesync.manifest(str(dst)), remote)
    batches = statesync.batches(paths, remote, 700)
    assert batches == [["d/f0", "d/f1"], ["d/f2", "d/f3"], ["d/f4"]]
    for n, batch in enumerate(batches, 1):
        statesync.import_tar(str(dst), statesync.export_tar(str(src), batch), remote,
                             tree=n == len(batches))
        assert (dst / "gone").exists() == (n < len(batches))
    assert statesync.wanted(statesync.manifest(str(dst)), remote) == []
    assert statesync.manifest(str(dst)) == remote
    # A file larger than the limit goes alone.
    assert statesync.batches(["a", "b"], {"a": ["f", 5000, 0, 0o644],
                                          "b": ["f", 1, 0, 0o644]}, 700) == [["a"], ["b"]]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_import_gives_what_it_writes_to_the_owner_and_nothing_else(tmp_path):
    """The final delta's files, links and new directories get the
    instance's owner as they are written; files it does not carry are not
    walked (chowning the whole tree cost seconds per GB in the window)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "new" / "deep").mkdir(parents=True)
    dst.mkdir()
    (src / "new" / "deep" / "f").write_text("x")
    os.symlink("f", src / "new" / "l")
    (dst / "untouched").write_text("keep")
    os.chown(dst / "untouched", 4242, 4242)
    remote = statesync.manifest(str(src))
    remote["untouched"] = statesync.manifest(str(dst))["untouched"]
    paths = statesync.wanted(statesync.manifest(str(dst)), remote)
    statesync.import_tar(str(dst), statesync.export_tar(str(src), paths), remote,
                         owner=(5151, 5152))
    for rel in ("new", "new/deep", "new/deep/f", "new/l"):
        st = os.lstat(dst / rel)
        assert (st.st_uid, st.st_gid) == (5151, 5152), rel
    assert os.lstat(dst / "untouched").st_uid == 4242


def test_append_only_file_goes_as_its_tail_and_a_rewrite_goes_whole(tmp_path):
    """A delta to a receiver sends a grown file's new end only when its
    start is, byte for byte (digest), what that receiver was sent; a file
    rewritten under the same start's length goes whole; a receiver whose
    copy is not the recorded start refuses the tail (TailMismatch) and
    changes nothing else before the sender sends it whole."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "journal").write_bytes(b"x" * 100000)
    (src / "counter").write_text("1")
    sent = {}
    current = statesync.manifest(str(src))
    statesync.import_tar(str(dst), statesync.export_tar(
        str(src), sorted(current), with_manifest=current, sent=sent))
    assert sent["journal"][0] == 100000

    with open(src / "journal", "ab") as f:
        f.write(b"line\n")
    (src / "counter").write_text("2")
    base, current = current, statesync.manifest(str(src))
    data = statesync.export_tar(str(src), statesync.wanted(base, current),
                                with_manifest=current, sent=sent)
    assert len(data) < 20000  # the tail and the small file, not 100 kB again
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(data))}
    assert members["journal"].pax_headers[statesync.TAIL_OFFSET] == "100000"
    assert statesync.TAIL_OFFSET not in members["counter"].pax_headers
    statesync.import_tar(str(dst), data)
    assert (dst / "journal").read_bytes() == (src / "journal").read_bytes()
    assert statesync.manifest(str(dst)) == statesync.manifest(str(src))

    # Same length kept at the start, different bytes: whole.
    (src / "journal").write_bytes(b"y" * 100005 + b"more")
    base, current = current, statesync.manifest(str(src))
    data = statesync.export_tar(str(src), ["journal"], with_manifest=current, sent=sent)
    assert statesync.TAIL_OFFSET not in tarfile.open(
        fileobj=io.BytesIO(data)).getmember("journal").pax_headers
    statesync.import_tar(str(dst), data)
    assert (dst / "journal").read_bytes() == (src / "journal").read_bytes()

    # The receiver's copy changed behind the sender's back: refused, whole next.
    with open(src / "journal", "ab") as f:
        f.write(b"tail")
    (dst / "journal").write_bytes(b"other")
    (dst / "stale").write_text("s")
    current = statesync.manifest(str(src))
    data = statesync.export_tar(str(src), ["journal"], with_manifest=current, sent=sent)
    with pytest.raises(statesync.TailMismatch) as err:
        statesync.import_tar(str(dst), data)
    assert err.value.paths == ["journal"] and (dst / "stale").exists()
    sent.pop("journal")
    statesync.import_tar(str(dst), statesync.export_tar(
        str(src), ["journal"], with_manifest=current, sent=sent))
    assert statesync.manifest(str(dst)) == statesync.manifest(str(src))


def test_start_rewritten_in_place_goes_whole(tmp_path, monkeypatch):
    """The head check reads the whole start the receiver has, in blocks (a
    small block here, so the start spans several): a byte rewritten in
    place anywhere in it, in the first block, at a block's edge or in the
    last byte sent, with the file grown or not, sends the file whole; so
    does a file truncated below what was sent.  The receiver's copy then
    equals the source's."""
    monkeypatch.setattr(statesync, "READ_BLOCK", 4096)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "journal").write_bytes(bytes(range(256)) * 100)  # 25,600 bytes
    sent = {}
    current = statesync.manifest(str(src))
    statesync.import_tar(str(dst), statesync.export_tar(
        str(src), ["journal"], with_manifest=current, sent=sent))

    def final(expect_tail):
        data = statesync.export_tar(str(src), ["journal"],
                                    with_manifest=statesync.manifest(str(src)), sent=sent)
        member = tarfile.open(fileobj=io.BytesIO(data)).getmember("journal")
        assert (statesync.TAIL_OFFSET in member.pax_headers) == expect_tail
        statesync.import_tar(str(dst), data)
        assert (dst / "journal").read_bytes() == (src / "journal").read_bytes()

    for offset, grow in ((0, True), (4095, True), (4096, False), (9000, True)):
        size = sent["journal"][0]
        assert offset < size
        with open(src / "journal", "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(b"\xff" if byte != b"\xff" else b"\x00")
            if grow:
                f.seek(0, os.SEEK_END)
                f.write(b"appended line\n")
        final(expect_tail=False)
    with open(src / "journal", "r+b") as f:  # the last byte sent
        f.seek(sent["journal"][0] - 1)
        f.write(b"!")
        f.seek(0, os.SEEK_END)
        f.write(b"more\n")
    final(expect_tail=False)
    with open(src / "journal", "ab") as f:  # appended only: the tail
        f.write(b"x" * 5000)
    final(expect_tail=True)
    with open(src / "journal", "r+b") as f:  # shorter than what was sent
        f.truncate(100)
    final(expect_tail=False)


def test_final_push_carries_its_manifest_as_a_change_from_the_pulled_round(tmp_path):
    """The frozen delta's manifest is what changed since the round the
    target pulled last (not an entry per file): the target rebuilds the
    source's manifest from the one it kept, and applies new, changed and
    deleted files and new directories.  A target that did not keep that
    round refuses it before writing anything; the same files with the whole
    manifest then go through."""
    src, dst = _source_with_files(tmp_path, "bulk/blob-", 200, b"b" * 100)
    (src / "journal").write_text("1\n")
    (src / "gone").write_text("g")
    pulls = statesync.Pulls(str(tmp_path / "pulls"))
    base = statesync.manifest(str(src))
    sent = {}
    statesync.import_tar(str(dst), statesync.export_tar(
        str(src), statesync.wanted({}, base), sent=sent), base)
    pulls.remember("new", "old", base, "r1")

    with open(src / "journal", "a") as f:
        f.write("2\n")
    (src / "gone").unlink()
    (src / "sub").mkdir(mode=0o750)
    (src / "sub" / "new").write_text("n")
    current = statesync.manifest(str(src))
    delta = statesync.manifest_delta("r1", base, current)
    assert sorted(delta["set"]) == ["journal", "sub", "sub/new"]
    assert delta["drop"] == ["gone"]
    data = statesync.export_tar(str(src), statesync.wanted(base, current),
                                with_manifest=current, manifest_delta=delta, sent=sent)
    members = tarfile.open(fileobj=io.BytesIO(data)).getmembers()
    assert [m.name for m in members] == [statesync.MANIFEST_DELTA_MEMBER, "journal",
                                        "sub/new"]
    assert members[0].size < 1000  # 203 entries in full
    # Not padded to a whole tar record: it fits a fresh TCP window's first flight.
    assert len(data) < tarfile.RECORDSIZE

    before = statesync.manifest(str(dst))
    with pytest.raises(statesync.ManifestBaseUnknown):
        statesync.import_tar(str(dst), data,
                             pulled=lambda r: pulls.of_round("new", "r0"))
    assert statesync.manifest(str(dst)) == before
    dst2 = tmp_path / "dst2"
    shutil.copytree(dst, dst2, symlinks=True)
    statesync.import_tar(str(dst), data, pulled=lambda r: pulls.of_round("new", r))
    assert statesync.manifest(str(dst)) == current
    assert oct(os.stat(dst / "sub").st_mode & 0o777) == "0o750"

    # A target without the round: the same files, the whole manifest.
    (dst2 / "stray").write_text("not the source's")
    full = statesync.with_full_manifest(data, current)
    assert [m.name for m in tarfile.open(fileobj=io.BytesIO(full)).getmembers()] == [
        statesync.MANIFEST_MEMBER, "journal", "sub/new"]
    statesync.import_tar(str(dst2), full, pulled=lambda r: None)
    assert statesync.manifest(str(dst2)) == current
