"""Validation and safe unpacking of ConPaaS application bundles.

A bundle is a ``.tar.gz`` holding ``run.sh`` and optionally ``init.sh``,
``notify.sh``, ``interrupt.sh`` and ``cleanup.sh``.  The same checks run on
the manager (so a bad upload is refused before anything is created) and on
the node (so a node never trusts what it is handed).
"""
import dataclasses
import gzip
import io
import os
import shutil
import stat
import tarfile
import zlib

from mec_conpaas import exception
from mec_conpaas import safefs

SCRIPTS = ("init.sh", "run.sh", "notify.sh", "interrupt.sh", "cleanup.sh")
CHUNK = 1 << 16


@dataclasses.dataclass
class BundleInfo:
    sha256: str
    size: int
    unpacked_size: int
    members: int
    files: list


class _LimitedReader(io.RawIOBase):
    """Counts decompressed bytes so a gzip bomb stops at the limit."""

    def __init__(self, raw, limit):
        self.raw = raw
        self.limit = limit
        self.count = 0

    def readable(self):
        return True

    def readinto(self, buf):
        data = self.raw.read(len(buf))
        self.count += len(data)
        if self.count > self.limit:
            raise exception.BundleTooLarge(
                "bundle unpacks to more than %d bytes (the configured "
                "[manager] max_bundle_size): make it smaller" % self.limit)
        buf[:len(data)] = data
        return len(data)


def _normalise(name):
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


MAX_HOPS = 40  # as the kernel's limit on links followed in one lookup
DIR, FILE, LINK = "d", "f", "l"


class _Tree:
    """The tree the members seen so far build, to judge each new member
    against the links before it.

    Checking links one at a time is not enough: ``a -> .`` then ``a/b ->
    ..`` are both harmless alone and together reach outside.  So link
    targets are resolved here through the links already seen, the way the
    kernel would, and a member whose own path passes through a link is
    refused outright.  A name may appear once (directories may repeat), and
    a missing directory a link target passes through is taken to be a
    directory from then on, so no later member can turn an accepted link
    into one that leaves the bundle.
    """

    def __init__(self):
        self.kinds = {"": DIR}  # path -> DIR, FILE or (LINK, target)

    def add(self, member):
        """Check one member; return its normalised name and, for a hard
        link, the path of the regular file it links to."""
        name = member.name
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise exception.InvalidBundle(
                "bundle member %r has an absolute path: store paths relative "
                "to the bundle's top directory" % name)
        norm = _normalise(name)
        try:
            parts = safefs.components(norm)
        except safefs.UnsafePath as e:
            fix = {"name too long": "at most %d bytes a component, %d a path"
                   % (safefs.NAME_MAX, safefs.PATH_MAX),
                   "contains '..'": "paths must stay inside the bundle",
                   "absolute path": "store paths relative to the bundle's "
                   "top directory"}.get(e.why, "rename it")
            raise exception.InvalidBundle("bundle member %r: %s: %s"
                                          % (name, e.why, fix)) from None
        if member.ischr() or member.isblk() or member.isfifo():
            raise exception.InvalidBundle(
                "bundle member %r is a device or FIFO: bundles may hold only "
                "regular files, directories and links inside the bundle" % name)
        if not (member.isfile() or member.isdir() or member.issym()
                or member.islnk()):
            raise exception.InvalidBundle(
                "bundle member %r has an unsupported type" % name)
        if member.mode & (stat.S_ISUID | stat.S_ISGID):
            raise exception.InvalidBundle(
                "bundle member %r is setuid or setgid: clear those bits "
                "(chmod u-s,g-s)" % name)
        norm = "/".join(parts)
        if not parts:
            if not member.isdir():
                raise exception.InvalidBundle(
                    "bundle member %r names the top directory but is not a "
                    "directory" % name)
            return norm, None
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            kind = self.kinds.setdefault(prefix, DIR)
            if kind == FILE:
                raise exception.InvalidBundle(
                    "bundle member %r is below %r, which is a file"
                    % (name, prefix))
            if kind != DIR:
                raise exception.InvalidBundle(
                    "bundle member %r is inside symlink %r: links are not "
                    "followed when unpacking; store the member at its real "
                    "path" % (name, prefix))
        if norm in self.kinds and not (member.isdir() and
                                       self.kinds[norm] == DIR):
            raise exception.InvalidBundle(
                "bundle member %r appears twice, or replaces a directory "
                "that other members or links pass through: each path may "
                "appear once" % name)
        source = None
        if member.issym():
            self._resolve(parts[:-1], member.linkname, "symlink %r" % name)
            if norm in self.kinds:  # its target passes through itself
                raise exception.InvalidBundle(
                    "symlink %r resolves through itself (a loop): point it "
                    "at its file directly" % name)
            self.kinds[norm] = (LINK, member.linkname)
        elif member.islnk():
            what = "hard link %r" % name
            target = _normalise(member.linkname)
            try:
                safefs.components(target)
            except safefs.UnsafePath:
                raise exception.InvalidBundle(
                    "%s points outside the bundle (to %r)"
                    % (what, member.linkname)) from None
            source = self._resolve([], target, what)
            if self.kinds.get(source) != FILE:
                raise exception.InvalidBundle(
                    "%s points to %r, which is not a regular file earlier in "
                    "the bundle" % (what, member.linkname))
            self.kinds[norm] = FILE
        else:
            self.kinds[norm] = DIR if member.isdir() else FILE
        return norm, source

    def _resolve(self, start, target, what):
        """Path, relative to the top, that ``target`` (seen from the
        directory ``start``) names, following the links already seen."""
        outside = exception.InvalidBundle(
            "%s points outside the bundle (to %r): make it a relative link "
            "to a file inside the bundle" % (what, target))
        if not target or target.startswith("/"):
            raise outside
        here = list(start)
        todo = target.split("/")[::-1]
        hops = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if not here:
                    raise outside
                here.pop()
                continue
            path = "/".join(here + [name])
            kind = self.kinds.get(path)
            if isinstance(kind, tuple):  # a link: read on from its target
                hops += 1
                if hops > MAX_HOPS:
                    raise exception.InvalidBundle(
                        "%s resolves through too many links (or a loop): "
                        "point it at its file directly" % what)
                todo.extend(kind[1].split("/")[::-1])
                continue
            if any(n not in ("", ".") for n in todo):
                if kind == FILE:
                    raise exception.InvalidBundle(
                        "%s passes through %r, which is a file" % (what, path))
                self.kinds[path] = DIR
            here.append(name)
        return "/".join(here)


def _open_tar(fileobj, limit):
    reader = _LimitedReader(gzip.GzipFile(fileobj=fileobj, mode="rb"), limit)
    return reader, tarfile.open(fileobj=io.BufferedReader(reader, CHUNK),
                                mode="r|")


def _iter_members(path, max_size, max_members):
    size = os.path.getsize(path)
    if size > max_size:
        raise exception.BundleTooLarge(
            "bundle is %d bytes, more than the %d allowed ([manager] "
            "max_bundle_size)" % (size, max_size))
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise exception.InvalidBundle(
                "bundle is not gzip-compressed: upload a .tar.gz "
                "(tar czf app.tar.gz -C app .)")
        f.seek(0)
        tree = _Tree()
        count = 0
        try:
            _reader, tar = _open_tar(f, max_size)
            for member in tar:
                count += 1
                if count > max_members:
                    raise exception.InvalidBundle(
                        "bundle has more than %d members" % max_members)
                norm, source = tree.add(member)
                yield tar, member, norm, source
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise exception.InvalidBundle(
                "bundle is not a valid gzip-compressed tar archive (%s): "
                "create it with tar czf" % e) from e


def is_sha256(name):
    """Whether ``name`` is a bundle's name: its SHA-256 as 64 lowercase hex
    digits.  The manager's store and every node's cache name files by it, so
    it becomes a path: nothing else may."""
    return isinstance(name, str) and len(name) == 64 and \
        not name.strip("0123456789abcdef")


def validate(path, service_type, max_size, max_members=20000):
    """Check a bundle completely; raise a user-facing error on the first
    problem."""
    import hashlib  # the manager's check of an upload; nodes only extract
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    files = []
    unpacked = 0
    for _tar, member, norm, _source in _iter_members(path, max_size,
                                                     max_members):
        if member.isfile():
            unpacked += member.size
            if unpacked > max_size:
                raise exception.BundleTooLarge(
                    "bundle unpacks to more than %d bytes ([manager] "
                    "max_bundle_size): make it smaller" % max_size)
        if norm:
            files.append(norm)
    has = set(files) | {name.split("/", 1)[0] for name in files}
    if service_type == "generic" and "run.sh" not in has:
        raise exception.InvalidBundle(
            "bundle has no run.sh at its top level: a generic service is "
            "started by running run.sh")
    if service_type == "web" and not ({"run.sh", "wsgi.py", "static"} & has):
        raise exception.InvalidBundle(
            "web bundle needs run.sh, a wsgi.py defining 'application', or "
            "a static/ directory at its top level")
    if service_type == "flink" and not ("job.py" in has or "run.sh" in has or any(
            "/" not in f and f.endswith(".jar") for f in files)):
        raise exception.InvalidBundle(
            "flink bundle needs job.py (a PyFlink job) or a .jar at its top "
            "level: give --bundle the .py or .jar file itself, or a .tar.gz "
            "with it at the top")
    return BundleInfo(sha256=digest.hexdigest(), size=os.path.getsize(path),
                      unpacked_size=unpacked, members=len(files), files=files)


def extract(path, dest, max_size, max_members=20000, owner=None):
    """Unpack a bundle (re-validated member by member) into ``dest``, which
    must be missing or empty.

    Every entry is created through ``safefs``: relative to a descriptor of
    its parent directory, with no link followed, so whatever the archive
    holds the kernel writes nothing outside ``dest``.  This rather than
    unpacking in a child that drops privileges: it needs no uid the tenant
    could otherwise use, no fork of the threaded agent, and it guards the
    reads and writes of state copies and logs the same way.  ``owner``:
    (uid, gid) every unpacked entry is given afterwards, e.g. the uid a
    user-namespaced container's root maps to; None keeps the caller's.
    On any error ``dest`` is removed again: nothing half-unpacked stays.
    """
    os.makedirs(dest, mode=0o755, exist_ok=True)
    with safefs.closing(safefs.open_root(dest)) as top:
        if os.listdir(top):
            raise exception.Conflict(
                "cannot unpack a bundle into %s: not empty" % dest)
        try:
            _extract_into(path, dest, top, max_size, max_members)
            if owner is not None:
                safefs.chown_tree(top, *owner)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise


def data_mode(mode):
    """The mode Python's tarfile ``data`` filter (PEP 706) gives a regular
    file: no setuid/setgid/sticky bits, no group or other write, owner read
    and write, executable bits only where the owner's is set.

    Written out because the nodes run Debian 12's Python 3.11.2, which
    predates the filters (3.11.4); a unit test holds it to the standard
    library's where that has them.  Directories get 0755 and links no
    mode, as the filter does; owners are never taken from the archive.
    """
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


def _extract_into(path, dest, top, max_size, max_members):
    written = 0
    for tar, member, norm, source in _iter_members(path, max_size,
                                                   max_members):
        if member.isfile() or member.islnk():
            member.mode = data_mode(member.mode)
        if not norm:
            continue
        parts = norm.split("/")
        with safefs.closing(safefs.open_dir(top, parts[:-1], create=0o755)) \
                as parent:
            name = parts[-1]
            if member.isdir():
                os.close(safefs.open_dir(parent, [name], create=0o755))
            elif member.issym():
                os.symlink(member.linkname, name, dir_fd=parent)
            elif member.islnk():
                with safefs.closing(safefs.open_dir(
                        top, source.split("/")[:-1])) as src_parent:
                    os.link(source.split("/")[-1], name, src_dir_fd=src_parent,
                            dst_dir_fd=parent, follow_symlinks=False)
            else:
                written = _write_file(tar.extractfile(member), parent, name,
                                      member.mode or 0o644, written, max_size)


def _write_file(src, parent, name, mode, written, max_size):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600, dir_fd=parent)
    with os.fdopen(fd, "wb") as out:
        while True:
            block = src.read(CHUNK)
            if not block:
                break
            written += len(block)
            if written > max_size:
                raise exception.BundleTooLarge(
                    "bundle unpacks to more than %d bytes" % max_size)
            out.write(block)
        os.fchmod(out.fileno(), mode)
    return written
