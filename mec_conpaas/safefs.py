"""Touching files in trees a tenant controls, without ever following a link.

A container's upper layer, its state directory and an unpacked bundle are
written by the tenant, while the node agent that reads and writes them runs
as root on the host.  A link anywhere in such a tree (``var/log`` -> ``/``,
``state/x`` -> ``/etc/shadow``), or one swapped in while the agent walks it,
would otherwise hand the agent's privileges to the tenant.

Every path below a trusted *root* is therefore walked one component at a
time from a directory descriptor: each directory is opened relative to its
parent with ``O_NOFOLLOW | O_DIRECTORY``, the last component with
``O_NOFOLLOW``, and ``..`` is refused before anything is opened.  The kernel
then cannot be tricked, however the tree changes meanwhile: a link (or
anything that is not a directory) where a directory is expected fails the
open with ``ENOTDIR``/``ELOOP``, and nothing outside the root can be named.
This works on every kernel a Pi runs, unlike ``openat2(RESOLVE_BENEATH)``
(Linux 5.6+, no Python binding).
"""
import contextlib
import errno
import os
import shutil
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NAME_MAX = 255
PATH_MAX = 4095


class UnsafePath(OSError):
    """A path that would leave its root or pass through a link."""

    def __init__(self, path, why):
        super().__init__(errno.ELOOP, "%s: %s" % (path, why))
        self.path = path
        self.why = why


def components(rel):
    """The components of a relative path; ``.`` and empty ones dropped.

    Raises UnsafePath for absolute paths, ``..`` and names too long for the
    kernel, so that callers can refuse them before touching the disk.
    """
    if not isinstance(rel, str) or "\0" in rel:
        raise UnsafePath(repr(rel), "not a path")
    if rel.startswith("/"):
        raise UnsafePath(rel, "absolute path")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(rel, "contains '..'")
    if len(rel.encode()) > PATH_MAX or any(
            len(p.encode()) > NAME_MAX for p in parts):
        raise UnsafePath(rel, "name too long")
    return parts


@contextlib.contextmanager
def closing(fd):
    try:
        yield fd
    finally:
        os.close(fd)


def open_root(path):
    """A descriptor of a trusted root directory (itself not a link)."""
    return os.open(path, DIR_FLAGS)


def open_dir(dirfd, parts, create=None, replace=False):
    """Descriptor of the directory ``parts`` below ``dirfd``.

    ``create``: mode for missing directories (None: missing is an error).
    ``replace``: a link or file where a directory belongs is removed first
    (the state copy mirrors a source on which that path is a directory).
    """
    fd = os.dup(dirfd)
    try:
        for name in parts:
            try:
                nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno == errno.ENOENT and create is not None:
                    _mkdir(fd, name, create)
                elif e.errno in (errno.ENOTDIR, errno.ELOOP) and replace:
                    remove(fd, name)
                    _mkdir(fd, name, create if create is not None else 0o755)
                elif e.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise UnsafePath("/".join(parts), "%r is a link or not a "
                                     "directory" % name) from None
                else:
                    raise
                nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _mkdir(dirfd, name, mode):
    try:
        os.mkdir(name, mode, dir_fd=dirfd)
    except FileExistsError:
        pass  # made meanwhile; the O_NOFOLLOW open that follows checks it


def open_file(dirfd, rel, flags=os.O_RDONLY, mode=0o600):
    """Open ``rel`` below ``dirfd``, following no link on the way or at the
    end.  Reading opens non-blocking and insists on a regular file, so a
    FIFO or device put there by a tenant cannot stall or feed the agent."""
    parts = components(rel)
    if not parts:
        raise UnsafePath(rel, "empty path")
    with closing(open_dir(dirfd, parts[:-1])) as parent:
        reading = (flags & os.O_ACCMODE) == os.O_RDONLY
        extra = os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if reading else 0)
        try:
            fd = os.open(parts[-1], flags | extra, mode, dir_fd=parent)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafePath(rel, "is a link") from None
            raise
    if reading:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePath(rel, "not a regular file")
        os.set_blocking(fd, True)
    return fd


def read_tail(root, rel, limit):
    """The last ``limit`` bytes of a regular file below ``root``."""
    with closing(open_root(root)) as rootfd, \
            closing(open_file(rootfd, rel)) as fd:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - limit), os.SEEK_SET)
        chunks = []
        left = limit  # a log still growing must not keep us reading
        while left > 0:
            block = os.read(fd, left)
            if not block:
                break
            chunks.append(block)
            left -= len(block)
        return b"".join(chunks)


def remove(dirfd, name):
    """Remove ``name`` (a file, link or whole directory) from ``dirfd``;
    a link is removed itself, never what it points to."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # rmtree with dir_fd walks by descriptors (avoids_symlink_attacks).
        shutil.rmtree(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)


def walk(rootfd, names_only=False):
    """Every entry below ``rootfd`` as (relative path, lstat result, open
    descriptor of its directory, name), parents before children.

    Directories are entered by ``open_dir`` (never through a link) and one
    at a time, so a deep tree costs neither recursion nor descriptors; the
    directory's descriptor is valid until the next entry is asked for.
    Entries that vanish meanwhile are skipped.

    ``names_only``: no entry is stat'ed (its type comes with the directory
    listing), the lstat result is None, and only regular files, directories
    and links are listed."""
    pending = [[]]
    while pending:
        parts = pending.pop()
        try:
            fd = open_dir(rootfd, parts)
        except (UnsafePath, FileNotFoundError):
            continue  # replaced or removed since it was listed
        with closing(fd):
            with os.scandir(fd) as it:
                entries = list(it)
            for entry in entries:
                try:
                    if names_only:
                        st, is_dir = None, entry.is_dir(follow_symlinks=False)
                        if not (is_dir or entry.is_symlink()
                                or entry.is_file(follow_symlinks=False)):
                            continue
                    else:
                        st = entry.stat(follow_symlinks=False)
                        is_dir = stat.S_ISDIR(st.st_mode)
                except FileNotFoundError:
                    continue
                yield "/".join(parts + [entry.name]), st, fd, entry.name
                if is_dir:
                    pending.append(parts + [entry.name])


def chown_tree(rootfd, uid, gid):
    """Give a tree and everything in it to uid:gid; links themselves."""
    os.fchown(rootfd, uid, gid)
    for _rel, _st, fd, name in walk(rootfd):
        try:
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            pass


def parent_of(rootfd, rel, create=None, replace=False):
    """(descriptor of the directory holding ``rel``, last component)."""
    parts = components(rel)
    if not parts:
        raise UnsafePath(rel, "empty path")
    return open_dir(rootfd, parts[:-1], create, replace), parts[-1]
