"""Copying a service's state directory between nodes.

Migration copies twice: a bulk copy while the old instance still serves,
then, with the old instance frozen, a final copy of only what changed.
Both use the same steps: the target asks the source for a manifest, asks
for a tar of the entries it lacks or that differ, and deletes what the
source no longer has.
"""
import io
import json
import os
import shutil
import tarfile


def manifest(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            if os.path.islink(path):
                # A link is its target; its own mtime cannot be copied.
                out[rel] = ["l", os.readlink(path), 0, 0]
                continue
            if name in dirnames:
                # Directory mtimes change as files come and go: not state.
                out[rel] = ["d", 0, 0, st.st_mode & 0o7777]
                continue
            out[rel] = ["f", st.st_size, st.st_mtime_ns, st.st_mode & 0o7777]
    return out


def wanted(local, remote):
    """Entries of ``remote`` that ``local`` lacks or holds differently."""
    return sorted(p for p, meta in remote.items()
                  if meta[0] != "d" and local.get(p) != meta)


MANIFEST_MEMBER = ".mec-conpaas-manifest.json"


def export_tar(root, paths, with_manifest=None):
    """Tar of ``paths``; with ``with_manifest``, the source's full manifest
    travels as the first member so the receiver can also apply deletions."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if with_manifest is not None:
            data = json.dumps(with_manifest).encode()
            info = tarfile.TarInfo(MANIFEST_MEMBER)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for rel in paths:
            full = os.path.join(root, rel)
            if os.path.lexists(full):
                tar.add(full, arcname=rel, recursive=False)
    return buf.getvalue()


def archive(root):
    """The whole state directory, as ``import_tar`` takes it."""
    current = manifest(root)
    return export_tar(root, wanted({}, current), with_manifest=current)


def import_tar(root, data, remote_manifest=None):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            if member.name == MANIFEST_MEMBER:
                remote_manifest = json.load(tar.extractfile(member))
                continue
            norm = os.path.normpath(member.name)
            if norm.startswith("..") or os.path.isabs(norm) or not (
                    member.isfile() or member.issym()):
                continue
            dest = os.path.join(root, norm)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if os.path.lexists(dest) and not os.path.isdir(dest):
                os.unlink(dest)
            if member.issym():
                os.symlink(member.linkname, dest)
                continue
            src = tar.extractfile(member)
            tmp = dest + ".mec-part"
            with open(tmp, "wb") as f:
                shutil.copyfileobj(src, f)
            os.chmod(tmp, member.mode & 0o7777)
            mtime_ns = int(remote_manifest.get(norm, [0, 0, member.mtime * 10**9])[2])
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, dest)
    # Directories (with their modes) and deletions.
    for rel, meta in sorted(remote_manifest.items()):
        if meta[0] == "d":
            os.makedirs(os.path.join(root, rel), exist_ok=True)
    local = manifest(root)
    for rel in sorted(set(local) - set(remote_manifest), key=len, reverse=True):
        full = os.path.join(root, rel)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        elif os.path.lexists(full):
            os.unlink(full)
    return len(data)
