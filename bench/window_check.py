"""What migration's frozen delta costs on the source and the target, per
state shape, with session 10's way and this one's, in one process (no edge:
CPU and page cache only, so the figures say what each piece costs, not
the window; bench/migrate.py measures the window).

A shape is a state directory of FILES files of 16 kB (the per-file costs:
stat walks, manifest entries; the bytes of these files are never re-sent)
and a journal of JOURNAL MB that the target holds from earlier rounds and
that grew by 10 kB since (what the open-loop user appends in 0.1 s).  The
defaults follow bench/migrate.py's sweep: 1, 100 and 1,024 files of 1 MB,
and the journal that 100 requests/s x 1 kB write during its migrations
(about 1 s, 14 s and 131 s in migrate-s11.json).

Per shape (median of --repeats):

* head check of the grown journal: session 10's (read its whole sent start
  into memory, SHA-256) and this one's (1 MB blocks into one buffer,
  XXH3-128, statesync._same_start); reading alone, the floor of any check;
* the final export on the source (statesync.export_tar with the tail
  record, as push_state does);
* the manifest sent in the window: whole (session 10) and as its change
  since the pulled round (statesync.manifest_delta), in bytes;
* the tar on the wire: session 10's (whole manifest, padded to 10 kB
  records) and this one's;
* the target's deletion pass: a stat of every entry (session 10) and a
  names-only listing (safefs.walk(names_only=True)).
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from mec_conpaas import safefs  # noqa: E402
from mec_conpaas.agents.node import statesync  # noqa: E402

TAIL = 10 << 10


def sha256_whole(path, length):
    """Session 10's head check: the sent start read whole, then SHA-256."""
    with open(path, "rb") as f:
        head = f.read(length)
        return hashlib.sha256(head).hexdigest()


def blocks_xxh3(path, length, digest):
    with open(path, "rb") as f:
        return statesync._same_start(f, [length, digest], statesync._hasher())


def read_only(path, length):
    buf = bytearray(min(statesync.READ_BLOCK, length))
    with open(path, "rb", buffering=0) as f:
        while length > 0:
            n = f.readinto(buf)
            if not n:
                break
            length -= n


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t))
    return round(statistics.median(out), 2)


def shape(root, files, journal_mb, repeats):
    src = os.path.join(root, "src")
    os.makedirs(os.path.join(src, "bulk"))
    for n in range(files):
        with open(os.path.join(src, "bulk", "blob-%d" % n), "wb") as f:
            f.write(os.urandom(16 << 10))
    journal = os.path.join(src, "journal")
    with open(journal, "wb") as f:
        f.write(os.urandom(int(journal_mb * 2**20)))
    base = statesync.manifest(src)
    sent = {}
    statesync.export_tar(src, ["journal"], sent=sent)
    sent_len, sent_digest = sent["journal"]
    with open(journal, "ab") as f:
        f.write(b"x" * TAIL)
    current = statesync.manifest(src)
    paths = statesync.wanted(base, current)
    delta = statesync.manifest_delta("r", base, current)

    def export():
        statesync.export_tar(src, paths, with_manifest=current, manifest_delta=delta,
                             sent={"journal": [sent_len, sent_digest]})

    old_tar = len(statesync.export_tar(src, paths, with_manifest=current,
                                       sent={"journal": [sent_len, sent_digest]}))
    old_tar = -(-old_tar // tarfile.RECORDSIZE) * tarfile.RECORDSIZE
    with safefs.closing(safefs.open_root(src)) as rootfd:
        stat_walk = timed(lambda: statesync._manifest(rootfd), repeats)
        names_walk = timed(lambda: set(r for r, *_ in safefs.walk(rootfd, names_only=True)),
                           repeats)
    out = {
        "files": files + 1, "journal_mb": journal_mb,
        "head_check_ms": {
            "sha256_whole_session10": timed(lambda: sha256_whole(journal, sent_len), repeats),
            "xxh3_128_blocks": timed(lambda: blocks_xxh3(journal, sent_len, sent_digest),
                                     repeats),
            "read_only_floor": timed(lambda: read_only(journal, sent_len), repeats)},
        "final_export_ms": timed(export, repeats),
        "manifest_bytes": {"whole_session10": len(json.dumps(current)),
                           "change_since_round": len(json.dumps(delta))},
        "tar_bytes": {"session10": old_tar,
                      "now": len(statesync.export_tar(
                          src, paths, manifest_delta=delta,
                          sent={"journal": [sent_len, sent_digest]}))},
        "target_deletion_pass_ms": {"stat_every_entry_session10": stat_walk,
                                    "names_only": names_walk}}
    shutil.rmtree(src)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shapes", default="1:0.1,100:1.4,1024:12.8",
                   help="FILES:JOURNAL_MB pairs, comma-separated")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--name", default="window-check")
    args = p.parse_args()
    load0 = os.getloadavg()[0]
    root = tempfile.mkdtemp(prefix="mec-window-check-")
    try:
        shapes = [shape(root, int(f), float(j), args.repeats)
                  for f, j in (s.split(":") for s in args.shapes.split(","))]
    finally:
        shutil.rmtree(root)
    load1 = os.getloadavg()[0]
    summary = dict(benchmark="window_check", shapes=shapes, repeats=args.repeats,
                   machine=common.machine(),
                   **common.load_note(round(load0, 2), round(load1, 2)))

    def plot(ax):
        xs = [s["files"] for s in shapes]
        for key, label, style in (
                ("sha256_whole_session10", "head check, SHA-256 whole (s10)", "o--"),
                ("xxh3_128_blocks", "head check, XXH3-128 in blocks", "o-"),
                ("read_only_floor", "reading the start alone", "o:")):
            ax.plot(xs, [s["head_check_ms"][key] for s in shapes], style, label=label)
        for key, label, style in (
                ("stat_every_entry_session10", "target deletion pass, stat (s10)", "s--"),
                ("names_only", "target deletion pass, names only", "s-")):
            ax.plot(xs, [s["target_deletion_pass_ms"][key] for s in shapes], style,
                    label=label)
        ax.set_xscale("log")
        ax.set_xlabel("files in the state directory (journal grows with them)")
        ax.set_ylabel("ms")
        ax.set_title("Frozen delta's pieces, in process (%s)" % summary["load_note"],
                     fontsize=8)
        ax.legend(fontsize=7)
    common.write(args.name, summary, plot)


if __name__ == "__main__":
    main()
