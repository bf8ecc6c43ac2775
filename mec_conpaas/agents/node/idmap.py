"""Idmapped mounts: the shared base image seen as owned by one instance's
user-namespace range, without copying or chowning it.

Containers run in a user namespace where their root is an unprivileged
host uid.  Their overlay's lower layer (the base image, owned by host root)
must then look owned by that uid.  An idmapped mount (Linux >= 5.12; as an
overlayfs lower layer >= 5.19) does that in milliseconds and per instance,
where a shifted copy would cost the image's size on every range.

util-linux learns ``mount -o X-mount.idmap`` only in 2.39 (Debian 12 has
2.38) and Python has no binding for the new mount API, so the three
syscalls are called through ctypes.  Their numbers are the same on every
architecture (the table was unified from 424 on).
"""
import ctypes
import os
import subprocess
import time

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x100000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class IdmapError(OSError):
    pass


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(res, what):
    if res < 0:
        err = ctypes.get_errno()
        raise IdmapError(err, "%s: %s" % (what, os.strerror(err)))
    return res


def userns_fd(uid, gid, count):
    """An open user namespace mapping ids 0..count-1 to uid/gid...: the
    shape of the container's own namespace.  The kernel keeps it alive as
    long as the fd (or a mount using it) exists, so the helper process that
    created it exits at once."""
    proc = subprocess.Popen(["unshare", "--user", "cat"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        own = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 5
        while os.readlink("/proc/%d/ns/user" % proc.pid) == own:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise IdmapError(0, "could not create a user namespace: %s" % (
                    proc.stderr.read().decode(errors="replace").strip()
                    if proc.poll() is not None else "timed out"))
            time.sleep(0.001)
        for name, first in (("uid_map", uid), ("gid_map", gid)):
            with open("/proc/%d/%s" % (proc.pid, name), "w") as f:
                f.write("0 %d %d\n" % (first, count))
        return os.open("/proc/%d/ns/user" % proc.pid, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        proc.stdin.close()
        proc.wait()
        proc.stderr.close()


def mount(source, target, uid, gid, count):
    """Mount ``source`` again at ``target`` with its ids shifted: a file
    owned by 0 on disk is seen (and written) as ``uid`` through it."""
    ns = userns_fd(uid, gid, count)
    try:
        tree = _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(source),
                                    OPEN_TREE_CLONE | os.O_CLOEXEC), "open_tree")
        try:
            attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, ns)
            _check(_libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH,
                                 ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
                   "mount_setattr(MOUNT_ATTR_IDMAP) on %s" % source)
            _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD,
                                 os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH),
                   "move_mount to %s" % target)
        finally:
            os.close(tree)
    finally:
        os.close(ns)
