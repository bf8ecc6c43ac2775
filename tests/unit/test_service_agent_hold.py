"""Migration's hold, in the real service agent with the sample webcounter
app: a request sent to the paused app waits in its listen backlog, and is
answered only after ``finish``, from the final delta written meanwhile
(never from the state before it); ``abort`` tells a manager that lost the
answer whether the delta was taken up, and if not, fences it: a late
``finish`` then refuses and the app never resumes with the old state.  In a
private network namespace (``unshare -n``): nothing binds on the host.
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from mec_conpaas.agents.service import agent as service_agent

SAMPLE = os.path.join(os.path.dirname(service_agent.__file__), os.pardir, os.pardir,
                      "samples", "webcounter")
SECRET = "s3cret-for-the-test"
APP_PORT, AGENT_PORT = 18080, 18999


def call(path, body=None, port=AGENT_PORT, timeout=10):
    req = urllib.request.Request(
        "http://127.0.0.1:%d%s" % (port, path),
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Authorization": "Bearer " + SECRET,
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("timed out")


def scenario(tmp):
    """Runs inside the namespace."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    app_dir, state = os.path.join(tmp, "app"), os.path.join(tmp, "state")
    shutil.copytree(os.path.realpath(SAMPLE), app_dir)
    os.makedirs(state)
    with open(os.path.join(tmp, "secret"), "w") as f:
        f.write(SECRET)
    env = dict(os.environ, MEC_APP_DIR=app_dir, MEC_STATE_DIR=state,
               MEC_LOG_FILE=os.path.join(tmp, "app.log"), MEC_SERVICE_TYPE="web",
               MEC_APP_PORT=str(APP_PORT), MEC_AGENT_PORT=str(AGENT_PORT),
               MEC_RUN_DIR=os.path.join(tmp, "run"),
               MEC_SECRET_FILE=os.path.join(tmp, "secret"))
    proc = subprocess.Popen([sys.executable, service_agent.__file__], env=env)
    try:
        wait(lambda: call("/health")[0] == 200)
        assert call("/", port=APP_PORT)[1]["hits"] == 1
        out = {"prepare": call("/restore", {"phase": "prepare"}),
               "hold": call("/restore", {"phase": "hold"}),
               "health_held": call("/health")}
        answers = []
        sent = threading.Thread(target=lambda: answers.append(
            (call("/", port=APP_PORT), time.monotonic())))
        sent.start()
        time.sleep(0.5)  # it reached the paused app and waits there
        out["answered_while_held"] = len(answers)
        # The final delta: the source's count, which went on to 41.
        with open(os.path.join(state, "hits"), "w") as f:
            f.write("41")
        t0 = time.monotonic()
        out["finish"] = call("/restore", {"phase": "finish"})
        sent.join(10)
        out["held_answer"] = answers[0][0]
        out["held_answer_after_finish_ms"] = round(1000 * (answers[0][1] - t0), 1)
        out["abort_after"] = call("/restore", {"phase": "abort"})
        out["next"] = call("/", port=APP_PORT)
        # A second migration given up before its delta came.
        call("/restore", {"phase": "prepare"})
        out["hold_again"] = call("/restore", {"phase": "hold"})
        out["abort_before"] = call("/restore", {"phase": "abort"})
        out["late_finish"] = call("/restore", {"phase": "finish"})
        out["health_after_abort"] = call("/health")
        return out
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_request_sent_to_the_held_app_waits_for_the_final_delta(tmp_path):
    res = subprocess.run(["unshare", "-n", sys.executable, __file__, str(tmp_path)],
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.splitlines()[-1])
    assert got["prepare"] == [200, {"mode": "restore.sh"}], got
    assert got["hold"] == [200, {"held": True, "mode": "restore.sh"}], got
    # HAProxy's check must not wait on the paused app.
    assert got["health_held"][0] == 200, got
    assert got["answered_while_held"] == 0, got
    assert got["finish"][0] == 200 and got["finish"][1]["held"] is True, got
    # Answered from the delta (41 + 1), not from the state it held (1 + 1).
    assert got["held_answer"] == [200, dict(got["held_answer"][1], hits=42)], got
    assert got["held_answer_after_finish_ms"] < 5000, got
    assert got["abort_after"][1] == {"mode": "restore.sh", "held": False,
                                     "restored": True}, got
    assert got["next"][1]["hits"] == 43, got
    assert got["hold_again"][1]["held"] is True, got
    assert got["abort_before"][1] == {"mode": "restore.sh", "held": True,
                                      "restored": False}, got
    assert got["late_finish"][0] == 503 and "abandoned" in \
        got["late_finish"][1]["detail"], got
    assert got["health_after_abort"][0] == 200, got  # still paused, alive


if __name__ == "__main__":
    print(json.dumps(scenario(sys.argv[1])))
