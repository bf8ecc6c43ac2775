import os

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
