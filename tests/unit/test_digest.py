"""mec_conpaas.digest gives what hashlib, hmac, uuid and secrets give (it
exists so the node agent needs no OpenSSL while idle: issue 13)."""
import hashlib
import hmac
import re
import uuid

from mec_conpaas import digest


def test_digests_match_hashlib_and_hmac():
    for key in (b"", b"k", b"k" * 32, b"k" * 64, b"k" * 65, bytes(range(256)) * 2):
        for msg in (b"", b"x", b"MLV1" + b"\0" * 60, bytes(range(256)) * 9):
            assert digest.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()
    for data in (b"", b"abc", bytes(range(256)) * 100):
        assert digest.sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
        assert digest.sha1(data).digest() == hashlib.sha1(data).digest()


def test_uuid5_and_tokens_match_the_standard_library():
    for ns in ("6f6e0a52-7c1e-4d37-9a8b-0c6d1e4f2a10", str(uuid.NAMESPACE_DNS)):
        for name in ("", "ap-1|02:00:00:00:00:01", "é|x", "x" * 300):
            assert digest.uuid5(ns, name) == str(uuid.uuid5(uuid.UUID(ns), name))
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", digest.token_urlsafe(32))
    assert re.fullmatch(r"[0-9a-f]{16}", digest.token_hex(8))
    assert digest.token_hex(8) != digest.token_hex(8)


def test_compare_digest_is_hmacs():
    assert digest.compare_digest(b"abc", b"abc") and not digest.compare_digest(b"abc", b"abd")
    assert digest.compare_digest("tok", "tok") and not digest.compare_digest("tok", "tOk")
