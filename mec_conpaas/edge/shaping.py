"""Putting the topology's latency on the links, and proving it is there.

``netem`` where the kernel has it; otherwise a userspace delay line fed by
NFQUEUE (see linkd).  Either way the edge measures round trips afterwards
and reports the method and the measurements; ``off`` (or a failure) is said
plainly in the status.
"""
import heapq
import socket
import subprocess
import time

from mec_conpaas.edge import network as net_mod


def netem_available(edge_net):
    """Probe on a real link end: the only reliable test of the kernel."""
    ap = edge_net.aps[0]
    res = subprocess.run(["tc", "-n", edge_net.netns(ap), "qdisc", "add", "dev",
                          net_mod.WIFI_AP_IF, "root", "netem", "delay", "1ms"],
                         capture_output=True, text=True)
    if res.returncode == 0:
        subprocess.run(["tc", "-n", edge_net.netns(ap), "qdisc", "del", "dev",
                        net_mod.WIFI_AP_IF, "root"], capture_output=True)
        return True
    return False


def link_ends(edge_net, wifi_ms):
    """Every (namespace node, interface, one-way delay, peer-is-ap) end."""
    ends = []
    for lk in edge_net.links:
        ends.append((lk.a, lk.if_a, lk.latency_ms, lk.b != "master"))
        ends.append((lk.b, lk.if_b, lk.latency_ms, lk.a != "master"))
    for ap in edge_net.wifi_aps():
        ends.append((ap, net_mod.WIFI_AP_IF, wifi_ms, False))
    return ends


def apply_netem(edge_net, wifi_ms):
    for node, ifname, ms, _ in link_ends(edge_net, wifi_ms):
        edge_net.ip(node, "link", "show", ifname)
        cmd = ["tc"] + ([] if node == "master" else ["-n", edge_net.netns(node)])
        subprocess.run(cmd + ["qdisc", "replace", "dev", ifname, "root", "netem",
                              "delay", "%gms" % ms], check=True, capture_output=True)
    for ap in edge_net.wifi_aps():
        subprocess.run(["tc", "-n", edge_net.client_netns(ap), "qdisc", "replace",
                        "dev", net_mod.WIFI_CLIENT_IF, "root", "netem", "delay",
                        "%gms" % wifi_ms], check=True, capture_output=True)


def nfqueue_plan(edge_net, wifi_ms):
    """Per access point: {queue: delay} and the iptables rules feeding them.

    Only access points run a delay line.  A link to another access point is
    delayed on egress at each end; a link to the master or to a Wi-Fi user
    (namespaces without a delay line) is delayed on both egress and ingress
    at the access point's end.
    """
    plan = {}
    for node, ifname, ms, peer_is_ap in link_ends(edge_net, wifi_ms):
        if node == "master":
            continue
        queues, rules = plan.setdefault(node, ({}, []))
        qnum = next((q for q, d in queues.items() if d == ms), len(queues))
        queues[qnum] = ms
        rules.append(["POSTROUTING", "-o", ifname, qnum])
        if not peer_is_ap:
            rules.append(["PREROUTING", "-i", ifname, qnum])
    return plan


def install_nfqueue_rules(edge_net, ap, rules):
    keep_held_packets(edge_net, ap)
    unthrottle_local_senders(edge_net, ap)
    for chain, flag, ifname, qnum in rules:
        subprocess.run(["ip", "netns", "exec", edge_net.netns(ap), "iptables", "-t",
                        "mangle", "-A", chain, flag, ifname, "-j", "NFQUEUE",
                        "--queue-num", str(qnum)], check=True, capture_output=True)


# br_netfilter's switches: with them on, a packet that came in through a
# bridge port is tied to that port (its physindev) while a delay line holds
# it.
BRIDGE_NF_SYSCTLS = tuple("net.bridge.bridge-nf-call-%s=0" % t
                          for t in ("iptables", "ip6tables", "arptables"))


def keep_held_packets(edge_net, node):
    """Turn br_netfilter off in the namespace of a node with a delay line.

    The kernel drops every queued packet tied to a device that goes down
    (nfnetlink_queue's device notifier), and br_netfilter ties a packet
    that comes in through a bridge port to that port.  A container's port
    goes when its tasks are killed (its network namespace ends as they
    exit, taking the veth pair: 22-220 ms after the kill, measured): the
    resets a migration's killed source sends the requests it held while
    frozen were still in the 30 ms delay line to the cloud when the port
    went, were dropped, and those requests waited for the client's timeout
    (issue 15's return from the cloud; a 250 ms grace before the domain's
    destroy did not help, as the veth goes before).
    A wire, or netem's qdisc, would have sent them.  Nothing here needs
    bridged traffic in iptables: tenant isolation filters it in nftables'
    bridge family (agents/node/isolation.py), and the delay rules match
    the bridge device (``-i``/``-o``), which is the same either way.  A
    kernel without br_netfilter has no such key: ``-e`` skips it.
    """
    subprocess.run(["ip", "netns", "exec", edge_net.netns(node), "sysctl", "-q", "-e",
                    "-w"] + list(BRIDGE_NF_SYSCTLS), check=True, capture_output=True)


# What a node with a delay line sets for its own TCP senders (see
# unthrottle_local_senders).
SENDER_SYSCTLS = ("net.ipv4.tcp_congestion_control=reno",
                  "net.ipv4.tcp_min_tso_segs=64")


def unthrottle_local_senders(edge_net, node):
    """Let the node's own TCP senders fill its delayed links as a wire
    would let them.

    A wire holds nothing of the sender's; the delay line holds its
    packets in this kernel, and TCP small queues let a socket have only
    about two of its buffers below TCP at a time (tcp_small_queue_check),
    freed once the delay line lets them go.  With the small buffers TCP
    builds at a low rate (two segments each), a local sender got four
    segments across per link latency whatever its window: HAProxy's
    upload of 200 KB to an instance on the cloud node took 1.18 s over
    the 30 ms link instead of 0.39 s (bench/stream.py's frames, the same
    for the node agents' state copies).  64-segment buffers make those two
    buffers a window's worth.  BBR (this machine's default) sizes its
    buffers from its pacing rate and ignores ``tcp_min_tso_segs``, so the
    node's senders use reno, which a network namespace may always choose.
    Forwarded traffic (containers', Wi-Fi users') is not affected either
    way: the node's own sockets only (HAProxy, node agent)."""
    subprocess.run(["ip", "netns", "exec", edge_net.netns(node), "sysctl", "-q", "-w"]
                   + list(SENDER_SYSCTLS), check=True, capture_output=True)


def expected_rtt_ms(edge_net, ap):
    """Round trip from the master to ``ap`` over the shortest path."""
    path = _path(edge_net, "master", ap)
    return 2 * sum(next(lk.latency_ms for lk in edge_net.links
                        if {lk.a, lk.b} == {a, b})
                   for a, b in zip(path, path[1:]))


def _path(edge_net, src, dst):
    g = {}
    for lk in edge_net.links:
        g.setdefault(lk.a, []).append((lk.b, lk.latency_ms))
        g.setdefault(lk.b, []).append((lk.a, lk.latency_ms))
    heap, seen = [(0.0, src, [src])], set()
    while heap:
        d, n, path = heapq.heappop(heap)
        if n == dst:
            return path
        if n in seen:
            continue
        seen.add(n)
        for m, w in g.get(n, []):
            heapq.heappush(heap, (d + w, m, path + [m]))
    return [src]


def measure_rtt_ms(address, port, samples=5):
    """TCP connect time (SYN to SYN-ACK): one round trip, no ICMP needed."""
    best = None
    for _ in range(samples):
        s = socket.socket()
        s.settimeout(2)
        t0 = time.perf_counter()
        try:
            s.connect((address, port))
            rtt = (time.perf_counter() - t0) * 1000
            best = rtt if best is None else min(best, rtt)
        except OSError:
            pass
        finally:
            s.close()
    return best
