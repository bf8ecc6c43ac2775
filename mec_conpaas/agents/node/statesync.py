"""Copying a service's state directory between nodes.

Migration copies twice: a bulk copy while the old instance still serves,
then, with the old instance frozen, a final copy of only what changed.
Both use the same steps: the target asks the source for a manifest, asks
for a tar of the entries it lacks or that differ, and deletes what the
source no longer has.

Pre-copy rounds between the two (the source still serves, and its writes
go on) compare the source's manifest with the one the target last pulled,
not with the target's files: the target's app has been running since the
bulk copy and may have written its own files (its address, a pid file),
which a comparison with its files would overwrite with the source's
older ones.  A round copies only what changed on the source since the
last pull, and deletes only what the source deleted since then.  A file
changed on both sides takes the source's version: the source's is the
service's state, which users are still writing.

The state directory belongs to the tenant, whose instance may change it
while we copy, and both ends run as root: every path is walked through
``safefs``, so no link is followed on either side (in the manifest, the
export, the import or the deletions).  Links are copied as links (their
target text); a path that passes through a linked directory is neither
read nor written; setuid/setgid bits, devices, FIFOs and sockets are not
copied.
"""
import io
import json
import os
import stat
import tarfile
import threading
import time

from mec_conpaas import digest
from mec_conpaas import exception
from mec_conpaas import safefs

KINDS = ("f", "d", "l")


def manifest(root):
    with safefs.closing(safefs.open_root(root)) as rootfd:
        return _manifest(rootfd)


def _manifest(rootfd):
    out = {}
    for rel, st, parent, name in safefs.walk(rootfd):
        if stat.S_ISLNK(st.st_mode):
            # A link is its target; its own mtime cannot be copied.
            try:
                out[rel] = ["l", os.readlink(name, dir_fd=parent), 0, 0]
            except OSError:
                continue  # gone or replaced meanwhile
        elif stat.S_ISDIR(st.st_mode):
            # Directory mtimes change as files come and go: not state.
            out[rel] = ["d", 0, 0, st.st_mode & 0o777]
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ["f", st.st_size, st.st_mtime_ns, st.st_mode & 0o777]
    return out


def wanted(local, remote):
    """Entries of ``remote`` that ``local`` lacks or holds differently."""
    return sorted(p for p, meta in remote.items()
                  if meta[0] != "d" and local.get(p) != meta)


def batches(paths, manifest, limit):
    """``paths`` in order, cut into lists of files weighing about ``limit``
    bytes each (a larger file goes alone)."""
    out, size = [], 0
    for p in paths:
        meta = manifest.get(p) or ["f", 0]
        weight = int(meta[1]) if meta[0] == "f" else 0
        if not out or (out[-1] and size + weight > limit):
            out.append([])
            size = 0
        out[-1].append(p)
        size += weight
    return out


class Sent:
    """Per (source instance, receiving instance): what the receiver got of
    each file (``export_tar``'s ``sent``), so later deltas to it can be
    tails.  Kept per receiver: another instance may hold other bytes under
    the same size.  In memory: after an agent restart deltas go whole."""

    def __init__(self):
        self.records = {}
        self.lock = threading.Lock()

    def to(self, iid, receiver, whole=()):
        """The record for ``receiver``, without ``whole`` (paths the receiver
        did not have as recorded: they go whole)."""
        if not isinstance(receiver, str) or not receiver:
            return None
        with self.lock:
            sent = self.records.setdefault((iid, receiver), {})
            for path in whole:
                sent.pop(path, None)
            return sent

    def forget(self, iid):
        with self.lock:
            for key in [k for k in self.records if iid in k]:
                del self.records[key]


class Pacer:
    """Holds a copy to ``rate`` bytes/s on average, one batch at a time:
    batches of at most ``PACE_S`` worth of bytes, each followed by the wait
    that keeps the total on schedule.  Small batches keep each burst short,
    so requests sharing the link wait behind at most one batch."""

    PACE_S = 0.125

    def __init__(self, rate, batch_limit):
        self.rate = rate
        self.limit = batch_limit if not rate else max(
            64 << 10, min(batch_limit, int(rate * self.PACE_S)))
        self.t0 = time.monotonic()
        self.sent = 0

    def sent_batch(self, nbytes):
        self.sent += nbytes
        if self.rate:
            ahead = self.sent / self.rate - (time.monotonic() - self.t0)
            if ahead > 0:
                time.sleep(ahead)


MANIFEST_MEMBER = ".mec-conpaas-manifest.json"
# Instead of the manifest: what changed in it since the manifest the
# receiver pulled last (its ``round``), so the frozen delta carries what
# changed, not one entry per file of the state directory.
MANIFEST_DELTA_MEMBER = ".mec-conpaas-manifest-delta.json"

# The head check reads a file's start in blocks of this many bytes, into
# one buffer: never the whole start at once in the agent's memory.
READ_BLOCK = 1 << 20


# A member holding only the end of a file the receiver has the start of:
# the pax header gives the offset it is written at.
TAIL_OFFSET = "MEC.tail_offset"


def _hasher():
    """A fresh digest for the head check: XXH3-128.  The check runs inside
    migration's frozen window and reads the whole start of every file that
    grew (a journal: the bytes appended since the migration began), so its
    cost per byte is the window's.  XXH3 hashes at memory speed, where
    SHA-256 took ten times longer here with SHA-NI and longer still on a
    Pi's Cortex-A72, which has no SHA instructions.  Not a cryptographic
    hash: what it compares is the tenant's own file against bytes taken
    from that same file, so a collision the tenant could craft would only
    spoil its own copy.  Imported on first use: an idle agent does not
    hold the module."""
    import xxhash
    return xxhash.xxh3_128()


def _same_start(f, known, digest):
    """Whether ``f`` still starts with the ``known[0]`` bytes whose digest
    is ``known[1]``, read from the start into ``digest``."""
    buf = bytearray(min(READ_BLOCK, max(known[0], 1)))
    view, left = memoryview(buf), known[0]
    while left:
        n = f.readinto(view[:min(left, len(buf))])
        if not n:
            return False  # shorter now: truncated, not appended to
        digest.update(view[:n])
        left -= n
    return digest.hexdigest() == known[1]


def manifest_delta(round_id, base, current):
    """What changed from ``base`` (the manifest served as round
    ``round_id``) to ``current``, as ``import_tar`` rebuilds ``current``
    from it: entries added or changed, and paths gone."""
    return {"base": round_id,
            "set": {p: meta for p, meta in current.items() if base.get(p) != meta},
            "drop": sorted(p for p in base if p not in current)}


class ManifestBaseUnknown(exception.Conflict):
    """A manifest delta against a round the receiver did not pull last."""

    def __init__(self, round_id):
        super().__init__("state delta: its manifest is a change from round %r, "
                         "which this instance did not pull last" % (round_id,))


class TailMismatch(exception.Conflict):
    """The receiver's copy of a file is not the start the sender assumed."""

    def __init__(self, paths):
        super().__init__("state delta: %d file(s) differ from what was sent "
                         "before: %s" % (len(paths), ", ".join(sorted(paths)[:5])))
        self.paths = sorted(paths)


def export_tar(root, paths, with_manifest=None, sent=None, manifest_delta=None):
    """Tar of ``paths``; with ``with_manifest``, the source's full manifest
    travels as the first member so the receiver can also apply deletions
    (or, with ``manifest_delta``, its change since a round the receiver
    pulled: see ``manifest_delta``).
    Paths that are gone, or are reached only through a link, are left out:
    the next manifest tells the receiver.

    ``sent``: what this receiver got of each file last time, ``{path:
    [bytes, sha256]}``, updated here.  A file whose first bytes are still
    exactly those goes as its tail only (a journal, a log: append-only
    files grew, and re-sending them whole made the frozen delta, and so
    migration's critical window, grow with the state's age and size).  The
    start is checked by its digest, not assumed from size and time."""
    buf = io.BytesIO()
    with safefs.closing(safefs.open_root(root)) as rootfd, \
            tarfile.open(fileobj=buf, mode="w") as tar:
        if manifest_delta is not None:
            _add_json(tar, MANIFEST_DELTA_MEMBER, manifest_delta)
        elif with_manifest is not None:
            _add_json(tar, MANIFEST_MEMBER, with_manifest)
        for rel in paths:
            try:
                _export_one(tar, rootfd, rel, sent)
            except (safefs.UnsafePath, FileNotFoundError, NotADirectoryError):
                continue
        end = tar.offset + 2 * tarfile.BLOCKSIZE
    # Without the zeros that pad a tar to 10 kB records after its end
    # marker (a reader stops at the marker): a small delta fits in the
    # first flight of a fresh TCP window, where padded it took a second
    # round trip inside migration's frozen window.
    return buf.getbuffer()[:end].tobytes()


def _add_json(tar, name, value):
    data = json.dumps(value).encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def with_full_manifest(data, manifest):
    """``data`` (an ``export_tar``) with ``manifest`` in place of its
    manifest or manifest delta: for a receiver that did not know the delta's
    base round.  The files go again as they are: nothing was written."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as src, \
            tarfile.open(fileobj=buf, mode="w") as tar:
        _add_json(tar, MANIFEST_MEMBER, manifest)
        for member in src:
            if member.name not in (MANIFEST_MEMBER, MANIFEST_DELTA_MEMBER):
                tar.addfile(member, src.extractfile(member) if member.isfile() else None)
    return buf.getvalue()


def archive(root):
    """The whole state directory, as ``import_tar`` takes it."""
    current = manifest(root)
    return export_tar(root, wanted({}, current), with_manifest=current)


def _export_one(tar, rootfd, rel, sent=None):
    parent, name = safefs.parent_of(rootfd, rel)
    with safefs.closing(parent):
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        info = tarfile.TarInfo(rel)
        info.mtime = st.st_mtime
        info.mode = st.st_mode & 0o777
        if stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(name, dir_fd=parent)
            tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            # Read whole first: a running instance may resize the file,
            # and the tar header must carry the length really sent.
            with os.fdopen(safefs.open_file(parent, name), "rb") as f:
                known = (sent or {}).get(rel)
                digest = _hasher() if sent is not None else None
                if known and _same_start(f, known, digest):
                    offset = known[0]
                    info.pax_headers = {TAIL_OFFSET: str(offset)}
                else:
                    if known:  # rewritten, or shorter: whole
                        f.seek(0)
                        digest = _hasher()
                    offset = 0
                data = f.read()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            if sent is not None:
                digest.update(data)
                sent[rel] = [offset + len(data), digest.hexdigest()]


def _checked_manifest(value):
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and len(v) == 4
            and v[0] in KINDS for k, v in value.items()):
        raise exception.BadRequest(
            "state archive's manifest is not a map of path -> [kind, size, "
            "mtime_ns, mode]")
    return value


def import_tar(root, data, remote_manifest=None, tree=True, owner=None, base=None,
               pulled=None):
    """Apply a tar made by ``export_tar`` to ``root``; with a manifest
    (passed or carried in the tar), files keep the source's mtimes to the
    nanosecond and, with ``tree``, the source's directories are created
    and what the source no longer has is deleted: everything ``root``
    holds outside the manifest, or, with ``base`` (the manifest of the
    last pull), only what ``base`` had and the manifest no longer has.

    A manifest delta in the tar is applied to ``pulled(round)``, the
    manifest this instance pulled as that round (None if it did not:
    ManifestBaseUnknown, before anything is written).

    ``owner`` (uid, gid): what is written, and the directories on its way,
    is given to it as it is written.  Chowning the whole tree afterwards
    walks every file of the state directory: inside migration's critical
    window that grew with the state's size (1 GB: seconds)."""
    if remote_manifest is not None:
        remote_manifest = _checked_manifest(remote_manifest)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r")
    except tarfile.TarError as e:
        raise exception.BadRequest("state archive is not a tar (%s)" % e) from None
    mismatched = []
    with tar, safefs.closing(safefs.open_root(root)) as rootfd:
        for member in tar:
            if member.name == MANIFEST_MEMBER:
                remote_manifest = _checked_manifest(_load_json(tar, member))
                continue
            if member.name == MANIFEST_DELTA_MEMBER:
                remote_manifest = _applied_delta(_load_json(tar, member), pulled)
                continue
            if not (member.isfile() or member.issym()):
                continue
            try:
                parent, name = safefs.parent_of(rootfd, member.name,
                                                create=0o755, replace=True)
            except safefs.UnsafePath:
                continue  # absolute, '..' or empty: never ours to write
            with safefs.closing(parent):
                if owner is not None:
                    _own_dirs(rootfd, member.name, owner)
                if member.issym():
                    safefs.remove(parent, name)
                    os.symlink(member.linkname, name, dir_fd=parent)
                    if owner is not None:
                        os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
                else:
                    meta = (remote_manifest or {}).get(member.name)
                    mtime_ns = int(meta[2]) if meta and meta[0] == "f" \
                        else int(member.mtime) * 10**9
                    offset = member.pax_headers.get(TAIL_OFFSET)
                    if offset is None:
                        _replace_file(parent, name, tar.extractfile(member),
                                      member.mode & 0o777, mtime_ns, owner)
                    elif not _append_file(parent, name, tar.extractfile(member),
                                          _offset(offset), member.mode & 0o777,
                                          mtime_ns, owner):
                        mismatched.append(member.name)
        if mismatched:
            # Before any deletion: the sender sends these whole, with the
            # manifest again (import_tar is idempotent).
            raise TailMismatch(mismatched)
        if remote_manifest is not None and tree:
            _apply_tree(rootfd, remote_manifest, owner, base)
    return len(data)


def _load_json(tar, member):
    try:
        return json.load(tar.extractfile(member))
    except ValueError:
        raise exception.BadRequest("state archive's manifest is not JSON") from None


def _applied_delta(delta, pulled):
    if not (isinstance(delta, dict) and isinstance(delta.get("drop"), list)
            and all(isinstance(p, str) for p in delta["drop"])):
        raise exception.BadRequest(
            "state archive's manifest delta is not {'base': round, 'set': "
            "{path: [kind, size, mtime_ns, mode]}, 'drop': [path, ...]}")
    changes = _checked_manifest(delta.get("set"))
    base = pulled(delta.get("base")) if pulled is not None else None
    if base is None:
        raise ManifestBaseUnknown(delta.get("base"))
    out = dict(base)
    out.update(changes)
    for path in delta["drop"]:
        out.pop(path, None)
    return out


def _own_dirs(rootfd, rel, owner):
    """Give the directories between the root and ``rel`` to ``owner``."""
    parts = safefs.components(rel)[:-1]
    for n in range(1, len(parts) + 1):
        with safefs.closing(safefs.open_dir(rootfd, parts[:n])) as fd:
            os.fchown(fd, *owner)


def _replace_file(parent, name, src, mode, mtime_ns, owner=None):
    """Write to a fresh temporary name, then rename over ``name``: the
    instance never sees half a file, and rename replaces a link itself."""
    tmp = ".mec-part-" + digest.token_hex(6)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600, dir_fd=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_out(f, src, mode, mtime_ns, owner)
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=parent,
                                    follow_symlinks=False).st_mode):
                safefs.remove(parent, name)  # rename cannot replace a dir
        except FileNotFoundError:
            pass
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        safefs.remove(parent, tmp)
        raise


def _offset(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise exception.BadRequest("state archive: bad tail offset %r" % text)
    return value


def _append_file(parent, name, src, offset, mode, mtime_ns, owner=None):
    """Write a tail at ``offset`` of the regular file ``name``, if it holds
    exactly ``offset`` bytes (else False: not the start the sender had).
    In place: the new instance's app does not serve before the switch."""
    try:
        # Non-blocking: a FIFO put there by the tenant fails to open
        # (ENXIO) instead of waiting for a reader.
        fd = safefs.open_file(parent, name, os.O_WRONLY | os.O_NONBLOCK)
    except (safefs.UnsafePath, OSError):
        return False
    with os.fdopen(fd, "wb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != offset:
            return False
        f.seek(offset)
        _write_out(f, src, mode, mtime_ns, owner)
    return True


def _write_out(f, src, mode, mtime_ns, owner):
    """Copy ``src`` into ``f`` from its position, then give the file the
    source's mode and mtime, and ``owner``."""
    while True:
        block = src.read(1 << 16)
        if not block:
            break
        f.write(block)
    f.flush()
    if owner is not None:
        os.fchown(f.fileno(), *owner)
    os.fchmod(f.fileno(), mode)
    os.utime(f.fileno(), ns=(mtime_ns, mtime_ns))


def _apply_tree(rootfd, remote, owner=None, base=None):
    """Directories (with their modes, and ``owner``) and deletions (of what
    is outside ``remote``, or with ``base``, of what left it since)."""
    for rel, meta in sorted(remote.items()):
        if meta[0] != "d":
            continue
        try:
            parts = safefs.components(rel)
        except safefs.UnsafePath:
            continue
        if parts:
            with safefs.closing(safefs.open_dir(rootfd, parts, create=0o755,
                                                replace=True)) as fd:
                if owner is not None:
                    os.fchown(fd, *owner)
                os.fchmod(fd, int(meta[3]) & 0o777)
    if base is None:
        # Names only: a stat of every file here put a cost per file of the
        # state directory into migration's frozen window.
        have = {rel for rel, _st, _fd, _name in safefs.walk(rootfd, names_only=True)}
    else:
        have = set(base)
    gone = have - set(remote)
    for rel in sorted(gone, key=len, reverse=True):
        try:
            parent, name = safefs.parent_of(rootfd, rel)
        except (safefs.UnsafePath, FileNotFoundError, NotADirectoryError):
            continue  # its directory went first
        with safefs.closing(parent):
            safefs.remove(parent, name)


class Pulls:
    """The manifest each instance on this node last pulled, and from which
    source instance: the base of the next pre-copy round.  Kept on disk
    (one small JSON file per instance), so a node agent restarted between
    two rounds still compares against what it pulled, not its own files."""

    def __init__(self, directory):
        self.directory = directory
        # The last pull's record per instance, until the final delta uses
        # it: read back from disk and checked, the manifest of 1 GB in 1 MB
        # files cost the frozen window 1-3 ms.
        self.kept = {}

    def _path(self, instance_id):
        return os.path.join(self.directory, instance_id + ".json")

    def _record(self, instance_id):
        try:
            with open(self._path(instance_id)) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def last(self, instance_id, source_id):
        """The manifest last pulled from ``source_id``, or None (no pull
        yet, or the last one was from another source)."""
        record = self._record(instance_id)
        if record.get("source") != source_id:
            return None
        return _checked_manifest(record.get("manifest"))

    def of_round(self, instance_id, round_id):
        """The manifest last pulled, if the source served it as
        ``round_id`` (the base of the source's final manifest delta)."""
        kept = self.kept.pop(instance_id, None)
        record = kept or self._record(instance_id)
        if not round_id or record.get("round") != round_id:
            return None
        return record["manifest"] if kept else _checked_manifest(record.get("manifest"))

    def remember(self, instance_id, source_id, pulled, round_id=None):
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        tmp = self._path(instance_id) + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"source": source_id, "manifest": pulled, "round": round_id}, f)
        os.replace(tmp, self._path(instance_id))
        if round_id:
            self.kept[instance_id] = {"source": source_id, "manifest": pulled,
                                      "round": round_id}

    def forget(self, instance_id):
        self.kept.pop(instance_id, None)
        try:
            os.unlink(self._path(instance_id))
        except FileNotFoundError:
            pass
