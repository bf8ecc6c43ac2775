"""The liveness datagram: how a node agent says "alive" for tens of
microseconds of the manager's CPU instead of an HTTP heartbeat's
milliseconds (README, "Control-plane scale").

Wire format (network byte order), UDP to the manager's liveness port::

    beat:  b"MLV1" | node id (36 ASCII, NUL-padded) | seq (u64) | sent (u64, µs) | HMAC
    ack:   b"MLA1" | node id (36 ASCII, NUL-padded) | seq (u64) | status (u8)    | HMAC

HMAC is HMAC-SHA256 of everything before it, keyed with the SHA-256 of the
node's own credential (what join issued it, manager/join.py): the manager
keeps only that digest (auth.digest), so no secret is added to the store.
``sent`` is on the *manager's* clock, as the agent estimates it from the
last HTTP heartbeat answer (its ``liveness.clock``), so an AP without a
real-time clock works.  ``seq`` only grows (it starts from the agent's
clock in µs, so an agent restart keeps it growing).

The manager accepts a beat only if its HMAC is right, its seq is above
the last it accepted from that node, ``sent`` is within ``[liveness]
max_age`` of its clock and the node is up (its last full report not older
than ``node_heartbeat_timeout``); it records the node alive *at ``sent``*
(never later), so even a replay inside the window vouches only for a time
the node really was alive.  The ack (same key) says ``OK`` or
``FULL``: send a full HTTP heartbeat (node down, clock estimate off).
Forged, replayed and unknown beats get no answer; an agent without an
``OK`` ack for its last beat falls back to HTTP.
"""
import struct

from mec_conpaas import digest

BEAT = b"MLV1"
ACK = b"MLA1"
_BEAT = struct.Struct("!4s36sQQ")
_ACK = struct.Struct("!4s36sQB")
MAC_LEN = 32
OK, FULL = 0, 1


def key(credential):
    """The HMAC key of a node credential: its SHA-256, what the manager
    stores (``Token.secret_hash``, hex)."""
    return digest.sha256(credential.encode()).digest()


def _sign(k, body):
    return body + digest.hmac_sha256(k, body)


def _open(k, data, size):
    """The signed body, or None if the HMAC is wrong."""
    body, mac = data[:size], data[size:]
    if len(mac) != MAC_LEN or not digest.compare_digest(
            mac, digest.hmac_sha256(k, body)):
        return None
    return body


def beat(k, node_id, seq, sent_us):
    if len(node_id.encode()) > 36:
        raise ValueError("a node id has at most 36 characters (a UUID)")
    return _sign(k, _BEAT.pack(BEAT, node_id.encode(), seq, sent_us))


def peek_beat(data):
    """``(node id, seq, sent µs)`` of a well-formed beat, not yet checked
    (the id says which key checks it), or None."""
    if len(data) != _BEAT.size + MAC_LEN or data[:4] != BEAT:
        return None
    _, nid, seq, sent = _BEAT.unpack_from(data)
    try:
        return nid.rstrip(b"\0").decode("ascii"), seq, sent
    except UnicodeDecodeError:
        return None


def check_beat(k, data):
    return _open(k, data, _BEAT.size) is not None


def ack(k, node_id, seq, status):
    return _sign(k, _ACK.pack(ACK, node_id.encode(), seq, status))


def read_ack(k, node_id, data):
    """``(seq, status)`` of an ack for ``node_id`` signed with ``k``, or
    None."""
    if len(data) != _ACK.size + MAC_LEN or data[:4] != ACK:
        return None
    body = _open(k, data, _ACK.size)
    if body is None:
        return None
    _, nid, seq, status = _ACK.unpack(body)
    if nid.rstrip(b"\0") != node_id.encode():
        return None
    return seq, status
