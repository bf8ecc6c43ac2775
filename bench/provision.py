"""Create-to-first-HTTP-200 of a web service, PaaS vs raw container.

PaaS: POST /v1/services, until the first 200 through ap-1's stable
endpoint (HAProxy).  Floor, same run, same node, same base image, same
domain definition and same app: mount the overlay, unpack the bundle,
start the libvirt LXC domain directly and wait for the app's first 200.
Both are timed from the master's namespace.

--peer podman,lxc: beside them, in the same run, the same app from the same
base image started with ``podman run`` and with plain ``lxc-start`` (see
bench/peers.py), create to first 200; a peer that cannot run here is
reported with its error.  They need ``tools/install-deps.sh --bench``.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import peers  # noqa: E402

from mec_conpaas import bundles  # noqa: E402
from mec_conpaas.agents.node import containers  # noqa: E402
from mec_conpaas.conf import node_agent as node_conf  # noqa: E402
from mec_conpaas.manager.service import build_sample_bundle  # noqa: E402


def paas_once(b, n):
    c = b.client
    t0 = time.monotonic()
    res = c.create_service("web", "prov%d" % n, node="ap-1")
    port = res["service"]["port"]
    ap_addr = b.edge.net.client_addresses("ap-1")[0]
    t1 = common.wait_http_200("http://%s:%d/" % (ap_addr, port), b.edge)
    op = c.wait(res["operation"]["id"])
    assert op["state"] == "SUCCEEDED", op
    c.wait(c.delete_service("prov%d" % n)["operation"]["id"])
    return t1 - t0


def floor_once(b, bundle_path, n):
    """The same container, started by hand on ap-1's libvirtd: the base
    image id-shifted under an overlay, the bundle and state owned by the
    instance's root, the node agent's own domain definition."""
    ap = "ap-1"
    base = b.edge.path("nodes", ap)
    sock = os.path.join(base, "libvirt", "run", "libvirt-sock")
    uri = "lxc:///system?socket=" + sock
    work = tempfile.mkdtemp(prefix="floor-", dir=base)
    os.chmod(work, 0o755)  # the instance's root must reach its rootfs
    paths = {k: os.path.join(work, k) for k in ("upper", "work", "rootfs", "state",
                                                "lower")}
    paths["bridge"] = "mecbr0"
    name = "floor-%d" % n
    addr = "10.250.1.%d" % (200 + n % 50)
    # The last uid range of ap-1's: the node agent hands out the first ones.
    defaults = {o.name: o.default for o in node_conf.node_opts}
    first = b.edge._idmap_start(ap) + (defaults["idmap_slots"] - 1) * defaults["idmap_size"]
    ids = (first, first, defaults["idmap_size"])
    mnt = ["nsenter", "--mount=/proc/%d/ns/mnt" % b.edge._pid("libvirtd-" + ap)]
    t0 = time.monotonic()
    for key in ("upper", "work", "rootfs", "state", "lower"):
        os.makedirs(paths[key])
    # Unpack into the upper layer before mounting (changing a layer under a
    # mounted overlay is undefined), then mount in the node's mount
    # namespace, as the node agent does.
    bundles.extract(bundle_path, os.path.join(paths["upper"], "srv", "app"), 10**8,
                    owner=ids[:2])
    for key in ("upper", "state"):
        os.chown(paths[key], *ids[:2])
    subprocess.run(mnt + [sys.executable, "-c",
                          "import sys; from mec_conpaas.agents.node import idmap; "
                          "idmap.mount(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))",
                          b.edge.image_dir, paths["lower"]] + [str(i) for i in ids],
                   check=True)
    subprocess.run(mnt + ["mount", "-t", "overlay", "overlay", "-o",
                          "lowerdir=%s,upperdir=%s,workdir=%s" % (
                              paths["lower"], paths["upper"], paths["work"]),
                          paths["rootfs"]], check=True)
    subprocess.run(mnt + ["umount", paths["lower"]], check=True)
    spec = {"id": name, "service_type": "web", "service_name": name,
            "memory_mb": 128, "cpus": 0.5}
    xml = containers._domain_xml(name, spec, paths, addr, 24, "10.250.1.1", ids)
    with open(os.path.join(work, "dom.xml"), "w") as f:
        f.write(xml)
    res = subprocess.run(["virsh", "-q", "-c", uri, "create",
                          os.path.join(work, "dom.xml")], capture_output=True, text=True)
    try:
        if res.returncode:
            raise RuntimeError("floor container did not start: " + res.stderr)
        t1 = common.wait_http_200("http://%s:8080/" % addr, b.edge)
    finally:
        subprocess.run(["virsh", "-q", "-c", uri, "destroy", name], capture_output=True)
        subprocess.run(mnt + ["umount", paths["rootfs"]], check=True)
        subprocess.run(["rm", "-rf", work])
    return t1 - t0


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="3 rounds instead of 10")
    p.add_argument("--rounds", type=int)
    p.add_argument("--peer", default="",
                   help="comma-separated peers measured in the same run: podman, lxc")
    args = p.parse_args()
    load_start = os.getloadavg()[0]
    wanted = [x for x in args.peer.split(",") if x.strip()]
    unknown = set(wanted) - {"podman", "lxc"}
    if unknown:
        p.error("unknown peer(s) %s: known are podman, lxc" % ", ".join(sorted(unknown)))
    rounds = args.rounds or (3 if args.quick else 10)
    bundle = tempfile.NamedTemporaryFile(suffix=".tar.gz", delete=False)
    bundle.write(build_sample_bundle())
    bundle.close()
    with common.BenchEdge("mcb-", 9692) as b:
        status = b.edge.status()
        mem = common.MemorySampler(b.edge)
        paas, floor = [], []
        for n in range(rounds):
            # Interleave so both see the same machine conditions.
            floor.append(floor_once(b, bundle.name, n))
            paas.append(paas_once(b, n))
            print("round %d: paas %.2f s, floor %.2f s" % (n, paas[-1], floor[-1]),
                  file=sys.stderr)
        memory = mem.finish()
        peer_results = {}
        for name in wanted:
            run = {"podman": peers.podman_provision, "lxc": peers.lxc_provision}[name]
            peer_results[name] = run(b, bundle.name, rounds)
            res = peer_results[name]
            if res.get("ran"):
                res["median"] = round(statistics.median(res["all"]), 3)
                res["ratio_paas_vs_peer"] = round(statistics.median(paas) / res["median"], 2)
            print("peer %s: %s" % (name, res.get("median") or res.get("error")),
                  file=sys.stderr)
    os.unlink(bundle.name)
    med_p, med_f = statistics.median(paas), statistics.median(floor)
    summary = {
        "benchmark": "provision", "rounds": rounds,
        "paas_create_to_200_s": {"median": round(med_p, 3), "all": [round(x, 3) for x in paas]},
        "floor_container_to_200_s": {"median": round(med_f, 3),
                                     "all": [round(x, 3) for x in floor]},
        "ratio": round(med_p / med_f, 2), "target_ratio": 2.0,
        "memory_mb": memory, "latency_shaping": common.shaping_note(status),
        "machine": common.machine(), "peers": peer_results,
        "peers_note": "each peer's rounds ran after the interleaved PaaS/floor rounds",
        **common.load_note(load_start, os.getloadavg()[0]),
        "reference": {"mec_conpaas_paper_pi2_s": 90, "picasso_pi3_s": 1.42},
    }

    def plot(ax):
        ran = [(n, r) for n, r in peer_results.items() if r.get("ran")]
        ax.boxplot([paas, floor] + [r["all"] for _, r in ran],
                   tick_labels=["MEC-ConPaaS create", "raw libvirt LXC"]
                   + ["%s (peer)" % n for n, _ in ran])
        ax.set_ylabel("seconds to first HTTP 200")
        ax.set_title("Provisioning: median ratio %.2f (target <= 2.0)" % summary["ratio"])
    common.write("provision", summary, plot)


if __name__ == "__main__":
    main()
