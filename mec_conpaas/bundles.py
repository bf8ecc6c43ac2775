"""Validation and safe unpacking of ConPaaS application bundles.

A bundle is a ``.tar.gz`` holding ``run.sh`` and optionally ``init.sh``,
``notify.sh``, ``interrupt.sh`` and ``cleanup.sh``.  The same checks run on
the manager (so a bad upload is refused before anything is created) and on
the node (so a node never trusts what it is handed).
"""
import dataclasses
import gzip
import hashlib
import io
import os
import posixpath
import stat
import tarfile
import zlib

from mec_conpaas import exception

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


def _check_member(member, names):
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise exception.InvalidBundle(
            "bundle member %r has an absolute path: store paths relative "
            "to the bundle's top directory" % name)
    norm = _normalise(name)
    if ".." in norm.split("/"):
        raise exception.InvalidBundle(
            "bundle member %r contains '..': paths must stay inside the "
            "bundle" % name)
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
    if member.issym():
        target = member.linkname
        resolved = posixpath.normpath(
            posixpath.join(posixpath.dirname(norm), target))
        if target.startswith("/") or resolved == ".." or \
                resolved.startswith("../"):
            raise exception.InvalidBundle(
                "symlink %r points outside the bundle (to %r): make it a "
                "relative link to a file inside the bundle" % (name, target))
    if member.islnk():
        target = _normalise(member.linkname)
        if target.startswith("/") or ".." in target.split("/") or \
                target not in names:
            raise exception.InvalidBundle(
                "hard link %r points outside the bundle (to %r)"
                % (name, member.linkname))
    return norm


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
        names = set()
        count = 0
        try:
            _reader, tar = _open_tar(f, max_size)
            for member in tar:
                count += 1
                if count > max_members:
                    raise exception.InvalidBundle(
                        "bundle has more than %d members" % max_members)
                norm = _check_member(member, names)
                names.add(norm)
                yield tar, member, norm
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise exception.InvalidBundle(
                "bundle is not a valid gzip-compressed tar archive (%s): "
                "create it with tar czf" % e) from e


def validate(path, service_type, max_size, max_members=20000):
    """Check a bundle completely; raise a user-facing error on the first
    problem."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    files = []
    unpacked = 0
    for _tar, member, norm in _iter_members(path, max_size, max_members):
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
    return BundleInfo(sha256=digest.hexdigest(), size=os.path.getsize(path),
                      unpacked_size=unpacked, members=len(files), files=files)


def extract(path, dest, max_size, max_members=20000):
    """Unpack a bundle (re-validated member by member) into ``dest``."""
    os.makedirs(dest, exist_ok=True)
    written = 0
    for tar, member, norm in _iter_members(path, max_size, max_members):
        if not norm:
            continue
        target = os.path.join(dest, norm)
        if member.isdir():
            os.makedirs(target, exist_ok=True)
            os.chmod(target, (member.mode & 0o777) | 0o700)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if member.issym():
            os.symlink(member.linkname, target)
        elif member.islnk():
            os.link(os.path.join(dest, _normalise(member.linkname)), target)
        else:
            src = tar.extractfile(member)
            with open(target, "wb") as out:
                while True:
                    block = src.read(CHUNK)
                    if not block:
                        break
                    written += len(block)
                    if written > max_size:
                        raise exception.BundleTooLarge(
                            "bundle unpacks to more than %d bytes" % max_size)
                    out.write(block)
            os.chmod(target, member.mode & 0o777)
