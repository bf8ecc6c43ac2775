"""A network namespace's established TCP connections, from the kernel's
sock_diag netlink interface (what ``ss`` uses).

Migration's freeze looks for requests in progress on the instance's app
port after every freeze attempt (containers.freeze).  It read
``/proc/PID/net/tcp``, which lists every socket of the namespace: an app
answering 100 requests/s closes each connection first and keeps ~60 s of
them in TIME_WAIT, about 6,000 lines the kernel printed and Python parsed
per look, 46 ms each on a loaded node (275.8 ms of a 354.8 ms freeze in
one test_migrate_precopy run).  Here the kernel filters by state and only
established connections come back.
"""
import ctypes
import os
import socket
import struct
import threading

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_ESTABLISHED = 1
CLONE_NEWNET = 0x40000000

NLMSG = struct.Struct("=IHHII")          # len, type, flags, seq, pid
REQ = struct.Struct("=BBBBI48x")         # inet_diag_req_v2, any socket id
MSG_HEAD = struct.Struct("=BBBB")        # family, state, timer, retrans
PORTS = struct.Struct(">HH")             # sport, dport (network order)
MSG_TAIL = struct.Struct("=IIIII")       # expires, rqueue, wqueue, uid, inode
TAIL_AT = MSG_HEAD.size + 48             # after the socket id


def _in_netns(pid):
    """A sock_diag socket of ``pid``'s network namespace.  A socket stays
    in the namespace it was made in; setns changes only the calling
    thread's, so a short-lived thread enters it, makes the socket and
    ends."""
    got = {}

    def make():
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open("/proc/%d/ns/net" % pid, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into the network "
                                  "namespace of pid %d" % pid)
            finally:
                os.close(fd)
            got["sock"] = socket.socket(socket.AF_NETLINK,
                                        socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                        NETLINK_SOCK_DIAG)
        except OSError as e:
            got["error"] = e
    t = threading.Thread(target=make, name="sockdiag")
    t.start()
    t.join()
    if "error" in got:
        raise got["error"]
    return got["sock"]


def established(pid):
    """[(local port, receive queue bytes)] of the established TCP
    connections (IPv4 and IPv6) in ``pid``'s network namespace."""
    out = []
    with _in_netns(pid) as sock:
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            body = REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_ESTABLISHED)
            sock.send(NLMSG.pack(NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY,
                                 NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
            out += _read_dump(sock, seq)
    return out


def _read_dump(sock, seq):
    rows = []
    while True:
        data = sock.recv(1 << 16)
        at = 0
        while at + NLMSG.size <= len(data):
            length, kind, _, got_seq, _ = NLMSG.unpack_from(data, at)
            if length < NLMSG.size:
                raise OSError("sock_diag: bad netlink message")
            msg = at + NLMSG.size
            if got_seq == seq:
                if kind == NLMSG_DONE:
                    return rows
                if kind == NLMSG_ERROR:
                    errno = -struct.unpack_from("=i", data, msg)[0]
                    if errno:
                        raise OSError(errno, "sock_diag: %s" % os.strerror(errno))
                elif kind == SOCK_DIAG_BY_FAMILY:
                    state = MSG_HEAD.unpack_from(data, msg)[1]
                    sport = PORTS.unpack_from(data, msg + MSG_HEAD.size)[0]
                    rqueue = MSG_TAIL.unpack_from(data, msg + TAIL_AT)[1]
                    if state == TCP_ESTABLISHED:
                        rows.append((sport, rqueue))
            at += (length + 3) & ~3
