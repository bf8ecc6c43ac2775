"""SHA-256, SHA-1, HMAC-SHA256 and random tokens for what the node agent
does while idle, without OpenSSL's libcrypto.

``import hashlib``, ``hmac`` or ``secrets`` loads ``_hashlib`` and with it
libcrypto: 3.4 MB resident in the node agent (issue 13: its budget is 30
MB; bench/footprint.py), kept for the process's life, for a liveness
datagram's HMAC every heartbeat, its API's token check and a few digests at
start.  CPython's own SHA implementations (what hashlib falls back to when
built without OpenSSL) give the same digests; tokens come from
``os.urandom`` as ``secrets``'s do.  libcrypto is then loaded only by what
needs OpenSSL itself: TLS (an https:// manager, an agent API with a
certificate) and the first /metrics scrape (prometheus_client's ssl).
"""
import base64
import os

try:  # Python 3.11
    from _sha256 import sha256
except ImportError:
    try:  # 3.12 and later
        from _sha2 import sha256
    except ImportError:  # an interpreter without them: OpenSSL's
        from hashlib import sha256
try:
    from _sha1 import sha1
except ImportError:
    from hashlib import sha1
# hmac.compare_digest itself where OpenSSL is not loaded: constant time.
from _operator import _compare_digest as compare_digest

_BLOCK = 64  # SHA-256's block size (RFC 2104's B)
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))

__all__ = ["compare_digest", "hmac_sha256", "sha1", "sha256", "token_hex",
           "token_urlsafe", "uuid5"]


def hmac_sha256(key, msg):
    """``hmac.new(key, msg, hashlib.sha256).digest()`` (RFC 2104)."""
    if len(key) > _BLOCK:
        key = sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = sha256(key.translate(_IPAD))
    inner.update(msg)
    return sha256(key.translate(_OPAD) + inner.digest()).digest()


def uuid5(namespace, name):
    """``str(uuid.uuid5(uuid.UUID(namespace), name))``: uuid5 imports
    hashlib for its SHA-1, and the uuid module platform (0.2 MB), for a
    node id made once."""
    b = bytearray(sha1(bytes.fromhex(namespace.replace("-", "")) + name.encode())
                  .digest()[:16])
    b[6] = b[6] & 0x0F | 0x50  # version 5
    b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
    h = b.hex()
    return "-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


def token_urlsafe(nbytes):
    """``secrets.token_urlsafe``: ``nbytes`` from os.urandom, base64url."""
    return base64.urlsafe_b64encode(os.urandom(nbytes)).rstrip(b"=").decode("ascii")


def token_hex(nbytes):
    """``secrets.token_hex``."""
    return os.urandom(nbytes).hex()
