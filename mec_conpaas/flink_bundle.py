"""A flink job given as the job itself (``--bundle job.py`` or ``app.jar``)
becomes the bundle the PaaS stores: a .tar.gz with it at the top, a
PyFlink script named ``job.py`` (what the JobManager submits)."""
import io
import os
import tarfile


def pack(path):
    """A file object with the .tar.gz bundle holding the job at ``path``."""
    name = "job.py" if path.endswith(".py") else os.path.basename(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tar.gettarinfo(path, arcname=name)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        with open(path, "rb") as f:
            tar.addfile(info, f)
    buf.seek(0)
    return buf
