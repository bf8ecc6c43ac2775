#!/usr/bin/env python3
"""Benchmark of joining (issue 11): N nodes joining one manager at once,
and a flashed node's power-on to joined, registered and hosting.

    bench/join.py [--nodes 1,10,50] [--timings PATH]

Manager side: a real manager (mec-conpaas-manager from this checkout, the
image tests' ``Manager``) serving HTTPS with a deployment CA.  Each of N
threads does what a node agent does (agents/node/joining.py): fetch the CA,
check its SHA-256 against the join token's pin, ``POST /v1/nodes/join``
over the verified connection (allocation, credential, agent certificate),
then ``POST /v1/nodes/register`` with its own credential.  The floor, in
the same run against the same manager: N threads doing two TLS requests
each that need no work (``GET /v1/ca.pem``), i.e. the HTTPS round trips a
join costs before the manager does anything.

Node side: the ``timings.json`` the emulated boot test keeps for its good
guest (tests/image: qemu-system-aarch64 TCG, full join over TLS): seconds
from the guest kernel's start to joined and registered (its journal), to
boot finished and, from qemu's start, to an LXC instance answering HTTP and
to the service the manager placed on the node answering through its
endpoint (over the backbone link, and over the air from a Wi-Fi station).
Not re-measured here (a boot is minutes of TCG): the file and its time are
named in the result.  The floor beside it: a guest of a bare image (the
``ci`` profile: the OS, first boot, no node software) from power-on to an
SSH login and to boot finished, from its own ``timings.json``.  The image
tests boot it in the same run as the guest under test, started together
(``MEC_CONPAAS_FLOOR_IMAGE``, guest ``floor``, stopped once it answers SSH):
its ``floor/timings.json`` beside the guest's ``good/timings.json`` is the
default; ``--floor-timings`` names another (then not the same run: the
result names both files and their times).

Writes bench/results/join.json and join.png (``--name``), and with guest
timings join-boot.png; prints the summary as one JSON object on its last line.
"""
import argparse
import concurrent.futures
import glob
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "tests", "image"))

from imagelib import Manager  # noqa: E402
from imagelib import sh  # noqa: E402

from bench import common  # noqa: E402
from mec_conpaas.agents.node import httpserver  # noqa: E402
from mec_conpaas.agents.node import joining  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pct(values, q):
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def _stats(ms):
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 1),
            "p95_ms": _pct(ms, 0.95), "max_ms": round(max(ms), 1)}


def one_join(manager, token, n, ca_file):
    """One node's join and registration, as the node agent does them."""
    pin, secret = joining.parse_token(token)
    t0 = time.monotonic()
    joining.fetch_pinned_ca(manager.url, pin, ca_file)
    ctx = joining.tls_context(ca_file)
    body = {"id": "00000000-0000-4000-9000-%012d" % n, "name": "bench-%d" % n,
            "identity": "serial:bench-%d" % n, "hostname": "bench-%d" % n,
            "mac": "02:00:00:%02x:%02x:%02x" % (n >> 16 & 255, n >> 8 & 255, n & 255)}
    answer = httpserver.call("POST", manager.url + "/v1/nodes/join", secret, body,
                             tls=ctx, timeout=120)
    joined = time.monotonic()
    httpserver.call("POST", manager.url + "/v1/nodes/register", answer["credential"],
                    # Loopback, a port nothing listens on: anything the manager
                    # sends the node stays on this machine.
                    dict(body, address="127.0.1.%d" % (n % 250 + 1), agent_port=1,
                         agent_token="bench", container_backend="none",
                         agent_tls=True), tls=ctx, timeout=120)
    return {"join_ms": 1000 * (joined - t0), "registered_ms": 1000 * (time.monotonic() - t0),
            "number": answer["allocation"]["number"],
            "client_network": answer["allocation"]["client_network"]}


def one_floor(manager, ca_file):
    ctx = joining.tls_context(ca_file)
    t0 = time.monotonic()
    for _ in range(2):
        httpserver.call("GET", manager.url + "/v1/ca.pem", raw=True, tls=ctx, timeout=120)
    return 1000 * (time.monotonic() - t0)


def concurrent_joins(manager, n, base):
    manage = [sys.executable, "-m", "mec_conpaas.cmd.manage", "--config-file", manager.conf]
    token = sh(*manage, "node-token", "create", "--uses", str(n)).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="mec-bench-join-")
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        floor = list(pool.map(lambda i: one_floor(manager, manager.ca_file), range(n)))
        t0 = time.monotonic()
        joins = list(pool.map(lambda i: one_join(manager, token, base + i,
                                                 os.path.join(tmp, "ca-%d.pem" % i)),
                              range(n)))
        wall = time.monotonic() - t0
    numbers = [j["number"] for j in joins]
    nets = [j["client_network"] for j in joins]
    assert len(set(numbers)) == n and len(set(nets)) == n, "two nodes share an allocation"
    reg = _stats([j["registered_ms"] for j in joins])
    fl = _stats(floor)
    return {"nodes": n, "wall_s": round(wall, 2), "join": _stats([j["join_ms"] for j in joins]),
            "join_and_register": reg, "floor_two_tls_requests": fl,
            "ratio_median_vs_floor": round(reg["median_ms"] / fl["median_ms"], 2),
            "distinct_allocations": True}


def guest_timings(path):
    if path is None:
        # Not a recursive glob: a build's root tree (with /proc) may be in there.
        # (tools/ci/image.sh keeps them in WORK/artifacts/image/GUEST/.)
        cache = os.path.join(REPO, "image-builder", "build-cache")
        found = sorted(glob.glob(os.path.join(cache, "*artifacts", "good", "timings.json"))
                       + glob.glob(os.path.join(cache, "*", "artifacts", "good",
                                                "timings.json"))
                       + glob.glob(os.path.join(cache, "*", "artifacts", "image", "good",
                                                "timings.json")),
                       key=os.path.getmtime)
        path = found[-1] if found else None
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        t = json.load(f)
    return {"file": shown_path(path), "path": path, "measured_utc": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(path))), **t}


def shown_path(path):
    """The timings file as the result records it: relative to the checkout
    when inside it, else only its guest directory and name (a kept boot's
    work directory is this machine's, not the project's)."""
    rel = os.path.relpath(path, REPO)
    if not rel.startswith(".."):
        return rel
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def with_floor(guest, floor):
    """The guest's times over the bare image's power-on to SSH login (or,
    for a floor file from before that was recorded, to boot finished)."""
    if guest is None or floor is None:
        return guest
    key = "ssh_s" if "ssh_s" in floor else "boot_finished_s"
    base = floor.get(key)
    guest = dict(guest, floor=dict(floor, compared=key))
    if base:
        guest["ratios_vs_floor"] = {
            k: round(guest[k] / base, 2) for k in (
                "ssh_s", "joined_s", "registered_s", "boot_finished_s",
                "first_instance_answered_after_poweron_s",
                # The manager-placed service answering through the node's endpoint
                # (tests/image/test_emulated_hosting.py), and over the air.
                "service_answered_after_poweron_s",
                "wifi_service_answered_after_poweron_s")
            if isinstance(guest.get(k), (int, float))}
    return guest


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="1,10,50",
                    help="comma-separated numbers of nodes joining at once")
    ap.add_argument("--timings", help="a guest's timings.json (default: the newest "
                    "under image-builder/build-cache)")
    ap.add_argument("--floor-timings", help="the bare (ci profile) guest's "
                    "timings.json: the floor the guest's times are divided by (default: "
                    "the 'floor' guest of the same image-test run, if there is one)")
    ap.add_argument("--name", default="join",
                    help="result files bench/results/NAME.json, NAME.png and, with guest "
                    "timings, NAME-boot.png (default: join)")
    args = ap.parse_args()
    load_start = os.getloadavg()
    manager = Manager(tempfile.mkdtemp(prefix="mec-bench-join-"), enrollment=None, tls=True)
    try:
        runs, base = [], 1
        for n in (int(x) for x in args.nodes.split(",")):
            runs.append(concurrent_joins(manager, n, base))
            base += n
    finally:
        manager.close()
    guest = guest_timings(args.timings)
    floor_path = args.floor_timings
    if floor_path is None and guest is not None:
        # The floor guest of the same image-test run, if it booted one.
        floor_path = os.path.join(os.path.dirname(os.path.dirname(guest["path"])),
                                  "floor", "timings.json")
    floor = guest_timings(floor_path) if floor_path and os.path.exists(floor_path) else None
    if floor is not None:
        floor["same_run"] = args.floor_timings is None
    for t in (guest, floor):
        if t is not None:
            t.pop("path", None)
    boot = with_floor(guest, floor)
    summary = {
        "benchmark": "join", "manager": "HTTPS, deployment CA, pinned join tokens",
        "concurrent": runs, "guest": boot,
        "machine": common.machine(),
        "loadavg_at_start": [round(x, 2) for x in load_start],
        "loadavg_at_end": common.loadavg(),
        **common.load_note(load_start[0], os.getloadavg()[0]),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    def plot(ax):
        xs = [str(r["nodes"]) for r in runs]
        w = 0.38
        pos = range(len(xs))
        ax.bar([p - w / 2 for p in pos], [r["join_and_register"]["median_ms"] for r in runs],
               w, label="join + register (median)", color="#3b7dd8")
        ax.bar([p + w / 2 for p in pos],
               [r["floor_two_tls_requests"]["median_ms"] for r in runs], w,
               label="floor: two TLS requests (median)", color="#999999")
        ax.set_xticks(list(pos), xs)
        ax.set_xlabel("nodes joining at once")
        ax.set_ylabel("ms per node")
        ax.set_title("Joining an HTTPS manager (load %.0f at start)" % load_start[0])
        ax.legend()
    common.write(args.name, summary, plot)
    if boot is not None:
        common.png(args.name + "-boot", lambda ax: plot_boot(ax, boot))


# What the boot plot shows, in order: (timings.json key, label).
BOOT_STEPS = (("ssh_s", "SSH login"), ("registered_s", "registered"),
              ("service_answered_after_poweron_s", "placed service answers"),
              ("wifi_service_answered_after_poweron_s", "... over the air"))


def plot_boot(ax, guest):
    """Seconds from power-on of the flashed node's steps, beside the bare floor's."""
    floor = guest.get("floor") or {}
    rows = [("floor: " + label, floor[k]) for k, label in BOOT_STEPS if k in floor]
    rows += [(label, guest[k]) for k, label in BOOT_STEPS if k in guest]
    ax.barh([r[0] for r in rows], [r[1] for r in rows],
            color=["#999999" if r[0].startswith("floor") else "#3b7dd8" for r in rows])
    for i, (_label, v) in enumerate(rows):
        ax.text(v, i, " %.0f s" % v, va="center")
    ax.invert_yaxis()
    ax.set_xlabel("seconds after power-on (qemu TCG, guest clock for SSH/registered)")
    ax.set_title("Flashed node vs bare image (same run)" if floor.get("same_run")
                 else "Flashed node vs bare image")


if __name__ == "__main__":
    main()
