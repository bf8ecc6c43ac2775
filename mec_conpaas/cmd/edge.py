"""mec-conpaas-edge: an embedded edge cloud on this one machine.

  up [--demo]     three emulated access points, the manager, and with --demo
                  a sample web service deployed on ap-1 then migrated to ap-3;
                  with --with-prometheus, Debian's prometheus scraping them
  status          processes and whether latency shaping is really active
  down            remove every container, namespace and process it started
  build-image     build (and cache) the base service image only; with
                  --flink also the flink variant (Java, Flink, OpenCV; ~4 min)
  user attach|move|detach|remove|list
                  emulated Wi-Fi users (README, "Users and mobility")
  replay TRACE    replay a mobility trace (CSV time_s,user,ap) against the
                  running edge, in real time or --speed X faster
"""
import argparse
import json
import subprocess
import sys
import time

from mec_conpaas.agents.node import httpserver
from mec_conpaas.edge import cluster
from mec_conpaas.edge import flink_image
from mec_conpaas.edge import image as image_mod


def step(text):
    print("==> " + text, flush=True)


def client_get(edge, ap, port):
    """One request from the emulated Wi-Fi user of ``ap`` to its endpoint."""
    ap_addr, _ = edge.net.client_addresses(ap)
    res = subprocess.run(["ip", "netns", "exec", edge.net.client_netns(ap),
                          sys.executable, "-c",
                          "import urllib.request,sys;print(urllib.request.urlopen("
                          "sys.argv[1],timeout=5).read().decode())",
                          "http://%s:%d/" % (ap_addr, port)],
                         capture_output=True, text=True)
    return res.stdout.strip() or res.stderr.strip().splitlines()[-1]


def wait_operation(edge, token, op):
    last = None
    while op["state"] not in ("SUCCEEDED", "FAILED"):
        if op["step"] != last:
            print("    %3d%%  %s" % (op["progress"], op["step"]), flush=True)
            last = op["step"]
        time.sleep(0.2)
        op = httpserver.call("GET", edge.manager_url() + "/v1/operations/" + op["id"],
                             token)["operation"]
    print("    %3d%%  %s" % (op["progress"], op["state"].lower()), flush=True)
    if op["state"] == "FAILED":
        raise SystemExit("operation failed: %s" % op["error"])
    return op


def demo(edge):
    import requests
    token = open(edge.path("admin-token")).read().strip()
    url = edge.manager_url()
    step("creating web service 'hello' (sample counter app) on ap-1")
    resp = requests.post(url + "/v1/services",
                         headers={"Authorization": "Bearer " + token},
                         data={"type": "web", "name": "hello", "node": "ap-1"},
                         timeout=30)
    if resp.status_code != 202:
        raise SystemExit("create failed: %s" % resp.text)
    wait_operation(edge, token, resp.json()["operation"])
    svc = httpserver.call("GET", url + "/v1/services/hello", token)["service"]
    port = svc["port"]
    for ap in edge.net.aps:
        step("endpoint on %s: http://%s:%d/ -> %s" % (
            ap, edge.net.client_addresses(ap)[0], port, client_get(edge, ap, port)))
    step("migrating 'hello' from ap-1 to ap-3 (make-before-break)")
    op = httpserver.call("POST", url + "/v1/services/hello/migrate", token,
                         {"to": edge.net.aps[-1]})["operation"]
    wait_operation(edge, token, op)
    for ap in edge.net.aps:
        step("endpoint on %s: http://%s:%d/ -> %s" % (
            ap, edge.net.client_addresses(ap)[0], port, client_get(edge, ap, port)))
    step("the service's stable endpoint is port %d on every access point" % port)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mec-conpaas-edge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", default=cluster.DEFAULT_STATE)
    parser.add_argument("--topology", help="topology YAML (default: packaged "
                        "ap-1 - ap-2 - ap-3 line)")
    parser.add_argument("--prefix", default="mec-", help="network namespace prefix")
    parser.add_argument("--shaping", default="auto",
                        choices=("auto", "netem", "nfqueue", "off"))
    parser.add_argument("--manager-port", type=int, default=9680)
    parser.add_argument("--image-dir", default=image_mod.DEFAULT_DIR)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up")
    up.add_argument("--demo", action="store_true")
    up.add_argument("--with-prometheus", action="store_true",
                    help="start Debian's prometheus against the edge (loopback)")
    up.add_argument("--prometheus-port", type=int, default=9090)
    up.add_argument("--tls", action="store_true",
                    help="as a deployment with a CA: the manager serves HTTPS, the "
                         "access points join with a token pinning its CA and serve "
                         "their agent API and state copies over HTTPS")
    sub.add_parser("down")
    sub.add_parser("status")
    bi = sub.add_parser("build-image")
    bi.add_argument("--flink", action="store_true",
                    help="also the flink service type's image variant")
    user = sub.add_parser("user", help="emulated Wi-Fi users")
    user.add_argument("action", choices=("attach", "move", "detach", "remove", "list"))
    user.add_argument("name", nargs="?")
    user.add_argument("ap", nargs="?")
    replay = sub.add_parser("replay", help="replay a mobility trace")
    replay.add_argument("trace", nargs="?", help="CSV time_s,user,ap (default: "
                        "the bundled example, mec_conpaas/etc/mobility-trace.csv)")
    replay.add_argument("--speed", type=float, default=1.0,
                        help="replay this many times faster than the trace")
    args = parser.parse_args(argv)
    if args.command == "build-image":
        image_mod.build(args.image_dir)
        if args.flink:
            flink_image.build(base=args.image_dir)
        return 0
    edge = cluster.Edge(args.state_dir, args.topology, args.prefix, args.shaping,
                        args.manager_port, args.image_dir,
                        log=lambda m: step(m),
                        tls=True if getattr(args, "tls", False) else None)
    try:
        if args.command == "up":
            status = edge.up()
            ls = status["latency_shaping"]
            step("latency shaping: %s, %s" % (
                ls["method"], "ACTIVE (verified by measured round trips)"
                if ls["active"] else "NOT ACTIVE"))
            for ap, r in ls["master_to_ap_rtt"].items():
                print("    master -> %s: expected %.1f ms, measured %s ms"
                      % (ap, r["expected_ms"], r["measured_ms"]))
            step("manager: %s; CLI credentials in %s" % (status["manager_url"],
                                                         status["credentials"]))
            if args.with_prometheus:
                from mec_conpaas.edge import prometheus
                step("prometheus: %s (config %s)" % (
                    prometheus.start(edge, args.prometheus_port),
                    edge.path(prometheus.NAME, "prometheus.yml")))
            if args.demo:
                demo(edge)
        elif args.command == "status":
            print(json.dumps(edge.status(), indent=2, sort_keys=True))
        elif args.command == "down":
            edge.down()
        elif args.command in ("user", "replay"):
            from mec_conpaas.cmd import edge_users
            return edge_users.main(edge, args)
    except cluster.EdgeError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
