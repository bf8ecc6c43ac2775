"""Face recognition in a live video stream: the MEC-ConPaaS paper's
workload, as a PyFlink job.

Frames come from the flink service's gateway (``MEC_FLINK_FEED``, lines
``ID BASE64-JPEG``; a socket source that reconnects for ever), faces are
found with OpenCV's Haar cascade, and each frame's detections go back to
the gateway (``MEC_FLINK_SINK``), where the camera user reads them.  The
job keeps one piece of state: per camera (the frame id without its
number), how many of its frames it has processed, in each result as
``count``; it survives a migration in the savepoint the job moves with
(functional test test_flink.py checks that the count continues).  The
same file runs on the host without a cluster (a local Flink mini cluster)
for the no-PaaS baseline of bench/stream.py.
"""
import base64
import json
import os
import time
import urllib.request

from pyflink.common import Configuration
from pyflink.common import Types
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.data_stream import DataStream
from pyflink.datastream.functions import MapFunction
from pyflink.datastream.functions import SinkFunction
from pyflink.datastream.state import ValueStateDescriptor


class Detect(MapFunction):

    def open(self, runtime_context):
        import cv2
        self.cv2 = cv2
        self.cascade = cv2.CascadeClassifier(os.path.join(
            cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
        self.where = os.environ.get("MY_IP") or "host"

    def map(self, line):
        import numpy as np
        rid, _, b64 = line.partition(" ")
        t0 = time.perf_counter()
        img = self.cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8),
                                self.cv2.IMREAD_GRAYSCALE)
        faces = self.cascade.detectMultiScale(img, scaleFactor=1.2, minNeighbors=5,
                                              minSize=(48, 48))
        return json.dumps({"id": rid, "camera": rid.rstrip("0123456789"),
                           "faces": [[int(v) for v in f] for f in faces],
                           "detect_ms": round((time.perf_counter() - t0) * 1000, 2),
                           "taskmanager": self.where})


class Count(MapFunction):
    """Keyed by camera: its frames processed so far, Flink state."""

    def open(self, runtime_context):
        self.frames = runtime_context.get_state(
            ValueStateDescriptor("frames", Types.LONG()))

    def map(self, result):
        n = (self.frames.value() or 0) + 1
        self.frames.update(n)
        out = json.loads(result)
        out["count"] = n
        return json.dumps(out)


class Post(MapFunction):
    """The sink: each result to the gateway, which drops a replayed one."""

    def __init__(self, url):
        self.url = url

    def map(self, result):
        req = urllib.request.Request(self.url, data=result.encode(), method="POST")
        for _attempt in range(50):
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    resp.read()
                break
            except OSError:
                time.sleep(0.2)  # the gateway is restarting: replayed later anyway
        return result


def main():
    config = Configuration()
    # One record per Python bundle: a frame's latency, not a batch's.
    config.set_string("python.fn-execution.bundle.size", "1")
    config.set_string("python.fn-execution.bundle.time", "1")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(int(os.environ.get("MEC_FLINK_PARALLELISM", "4")))
    host, port = os.environ["MEC_FLINK_FEED"].rsplit(":", 1)
    frames = DataStream(env._j_stream_execution_environment.socketTextStream(
        host, int(port), "\n", -1)).uid("frames")
    # uids: a savepoint's state finds its operator again in the job restored
    (frames.rebalance()
     .map(Detect(), output_type=Types.STRING()).name("detect faces").uid("detect")
     .key_by(lambda r: json.loads(r)["camera"], key_type=Types.STRING())
     .map(Count(), output_type=Types.STRING()).name("count per camera").uid("count")
     .map(Post(os.environ["MEC_FLINK_SINK"]), output_type=Types.STRING())
     .name("post detections").uid("post")
     .add_sink(SinkFunction(
         "org.apache.flink.streaming.api.functions.sink.DiscardingSink")))
    env.execute(os.environ.get("MEC_FLINK_JOB_NAME", "face-recognition"))


if __name__ == "__main__":
    main()
