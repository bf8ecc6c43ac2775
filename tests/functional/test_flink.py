"""The flink service type end to end: the paper's face-recognition job on
the embedded edge, fed by a camera user on an access point.

Create (JobManager + 1 TaskManager), feed frames, get detections, scale to
2 TaskManagers, migrate the whole service to another access point while
frames keep coming (the job stopped with a savepoint on the source and
submitted from it on the target, its state with it: a per-camera frame
count continues); every frame gets exactly one result (counted), and
faces are found where the frames show one.

Needs the flink image variant (``mec-conpaas-edge build-image --flink``,
~4 min once) and .venv-flink (tools/install-deps.sh) for the frames;
skipped without them.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from mec_conpaas.edge import flink_image
from tests.functional.conftest import wait_op

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "mec_conpaas", "samples", "facedetect")
FLINK_PY = os.path.join(ROOT, ".venv-flink", "bin", "python")

pytestmark = pytest.mark.skipif(
    not (flink_image.ready(flink_image.DEFAULT_DIR) and os.path.exists(FLINK_PY)),
    reason="needs the flink image (mec-conpaas-edge build-image --flink) and "
           ".venv-flink (tools/install-deps.sh)")


def make_frames(tmp_path, count, prefix):
    out = str(tmp_path / ("frames-%s" % prefix))
    subprocess.run([FLINK_PY, os.path.join(SAMPLE, "frames.py"), str(count), out, prefix],
                   check=True, timeout=120)
    with open(out + ".expected") as f:
        return out, json.load(f)


class Camera:
    """The camera user on an access point's Wi-Fi (samples/facedetect/
    camera.py): one frame every ``every`` s to the service's endpoint, and
    its detections read back."""

    def __init__(self, edge, ap, port, path, every=0.05):
        ap_addr, _ = edge.net.client_addresses(ap)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", edge.net.client_netns(ap), sys.executable,
             os.path.join(SAMPLE, "camera.py"), "--url", "http://%s:%d" % (ap_addr, port),
             "--frames", path, "--every", str(every), "--timeout", "400"],
            stdout=subprocess.PIPE, text=True)

    def wait(self, timeout=500):
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0
        return json.loads(out)


def client_json(edge, ap, port, path):
    ap_addr, _ = edge.net.client_addresses(ap)
    res = subprocess.run(
        ["ip", "netns", "exec", edge.net.client_netns(ap), sys.executable, "-c",
         "import sys,urllib.request as u;print(u.urlopen(sys.argv[1],timeout=10)"
         ".read().decode())", "http://%s:%d%s" % (ap_addr, port, path)],
        capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture
def pi4_aps(edge, admin):
    """ap-1 and ap-2 as Pi 4s with 2 GB: a flink instance (a JVM) holds
    [manager] flink_instance_memory_mb (640 MB), so a Pi 3's 1 GB (the
    topology's default capacity, 128 MB of it reserved) takes one, and
    ENORM's admission would spread the service over the access points;
    2 GB takes the JobManager and both TaskManagers on one, as the
    migration needs.  Back to the topology's after."""
    from tests.functional.test_qos import set_capacity
    for ap in ("ap-1", "ap-2"):
        set_capacity(edge, admin, ap, memory_mb=2048)
    yield
    for ap in ("ap-1", "ap-2"):
        set_capacity(edge, admin, ap)


def test_face_recognition_scale_migrate_no_record_lost(tmp_path, edge, admin, pi4_aps):
    t0 = time.monotonic()
    batches = [make_frames(tmp_path, n, p) for n, p in ((30, "a"), (60, "b"), (80, "c"))]
    expected = {}
    for _, exp in batches:
        expected.update(exp)
    # camera c: 60 frames while the service moves, 20 once it has moved
    with open(batches[2][0]) as f:
        lines = f.readlines()
    for name, part in (("c-during", lines[:60]), ("c-after", lines[60:])):
        with open(str(tmp_path / name), "w") as f:
            f.writelines(part)
    batches[2:] = [(str(tmp_path / "c-during"), None), (str(tmp_path / "c-after"), None)]
    wait_op(admin, admin.create_service(
        "flink", "faces", node="ap-1", count=2,
        bundle=os.path.join(SAMPLE, "job.py")), timeout=300)
    try:
        _scenario(edge, admin, batches, expected, t0)
    except BaseException:
        for entry in admin.logs("faces"):
            print("---- log of %s ----\n%s" % (entry["instance"], entry["log"][-20000:]))
        raise
    finally:
        wait_op(admin, admin.delete_service("faces"))


def _scenario(edge, admin, batches, expected, t0):
    svc = admin.service("faces")
    port = svc["port"]
    assert sorted(i["role"] for i in svc["instances"]) == ["master", "worker"]
    assert {i["node"] for i in svc["instances"]} == {"ap-1"}
    # The first frames wait in the gateway until the job runs.
    first = Camera(edge, "ap-1", port, batches[0][0], every=0.02).wait()
    assert first["results"] == first["frames"], first
    t_first = time.monotonic() - t0
    # Scale the TaskManagers 1 -> 2 while the camera sends.
    cam = Camera(edge, "ap-1", port, batches[1][0], every=0.1)
    wait_op(admin, admin.scale("faces", 3), timeout=300)
    scaled = cam.wait()
    assert scaled["results"] == scaled["frames"], scaled
    deadline = time.monotonic() + 120  # the new TaskManager's JVM starting
    while client_json(edge, "ap-1", port, "/stats")["flink"].get("taskmanagers") != 2:
        assert time.monotonic() < deadline, "the second TaskManager did not register"
        time.sleep(1)
    # Migrate the whole service (JobManager and both TaskManagers) to ap-2
    # while the camera sends.
    cam = Camera(edge, "ap-1", port, batches[2][0], every=0.1)
    wait_op(admin, admin.migrate("faces", "ap-2"), timeout=400)
    moved = cam.wait()
    assert moved["results"] == moved["frames"], moved
    svc = admin.service("faces")
    assert {i["node"] for i in svc["instances"]} == {"ap-2"}
    # The JobManager on ap-2 submits the job from the savepoint once its JVM
    # and a TaskManager are up; then camera c goes on.
    deadline = time.monotonic() + 240
    flink_now = None
    while True:
        assert time.monotonic() < deadline, flink_now
        try:
            flink_now = client_json(edge, "ap-1", port, "/stats")["flink"]
        except AssertionError:  # the proxies switching: ask again
            time.sleep(1)
            continue
        if flink_now.get("restored_from") and any(
                j["state"] == "RUNNING" for j in flink_now.get("jobs", [])):
            break
        time.sleep(2)
    t_restored = time.monotonic() - t0
    resumed = Camera(edge, "ap-1", port, batches[3][0], every=0.1).wait()
    assert resumed["results"] == resumed["frames"], resumed
    stats = client_json(edge, "ap-1", port, "/stats")
    got = client_json(edge, "ap-1", port, "/detections?from=0")["detections"]
    ids = [d["id"] for d in got]
    # No record lost, none seen twice (counted over the gateway's whole log,
    # which moved with the JobManager).
    assert len(ids) == len(set(ids)) == len(expected), stats
    assert set(ids) == set(expected)
    assert stats["received"] == len(expected) and stats["pending"] == 0, stats
    right = sum(1 for d in got if len(d["faces"]) == expected[d["id"]])
    assert right >= 0.9 * len(expected), (right, len(expected))
    workers = {d["taskmanager"] for d in got}
    assert len(workers) >= 2, workers  # the job ran on more than one TaskManager
    # The job moved through a savepoint: the JobManager on ap-2 submitted it
    # from the one the old JobManager took before its freeze ...
    steps = [o["step"] for o in admin.operations()
             if o["service"] == "faces" and o["kind"] == "migrate"]
    assert (stats["flink"].get("restored_from") or "").startswith(
        "/var/lib/service/savepoints/savepoint-"), (stats, steps)
    # ... and the job's state came with it: camera c's frame count (Flink
    # keyed state) goes on from the count the savepoint holds: the first
    # result after the savepoint counts one more than the last one before
    # it (the gateway drained the results before taking it, and noted how
    # many were in).
    before_sp = stats["savepoint"]["results"]
    counts_src = [d["count"] for d in got[:before_sp] if d["camera"] == "c"]
    counts_dst = [d["count"] for d in got[before_sp:] if d["camera"] == "c"]
    print("camera c counts: before the savepoint %s, after %s; restored from %s, "
          "%.0f s into the test" % (counts_src, counts_dst,
                                    stats["flink"]["restored_from"], t_restored))
    assert len(counts_dst) >= 20, "camera c's frames after the move are missing"
    assert counts_dst[0] == (counts_src[-1] if counts_src else 0) + 1, (
        counts_src, counts_dst, steps)
    assert stats["flink"]["restored_from"] == stats["savepoint"]["path"].replace(
        "file:", "", 1), stats
    print("flink test: first results %.0f s after create; total %.0f s; %s; right "
          "%d/%d; TaskManagers seen %s; latency p50 before/after scale/during "
          "migrate/after migrate %s" % (t_first, time.monotonic() - t0, stats, right, len(expected),
                          sorted(workers), [sorted(r["latency_ms"])[len(r["latency_ms"]) // 2]
                                            for r in (first, scaled, moved, resumed)]))
    # Flink's own logs (the tail of each instance's) through service logs;
    # a TaskManager that moved last may still be starting its JVM.
    deadline = time.monotonic() + 60
    while True:
        logs = {e["instance"]: e["log"] for e in admin.logs("faces")}
        if len(logs) == 3 and all("org.apache.flink" in x for x in logs.values()):
            break
        assert time.monotonic() < deadline, {i: x[-500:] for i, x in logs.items()}
        time.sleep(2)
