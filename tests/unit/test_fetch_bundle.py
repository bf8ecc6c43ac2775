"""The node agent's bundle cache (NodeAgent.fetch_bundle): content-addressed, so
what enters it is checked against its name, and the name never becomes a path."""
import hashlib
import os

import pytest

from mec_conpaas import exception
from mec_conpaas.agents.node import agent as agent_mod


class Manager:
    """Answers the agent's GET /v1/bundles/<sha256> with ``data`` and counts calls."""

    def __init__(self, data):
        self.data, self.calls = data, []

    def manager(self, method, path, body=None, raw=False, timeout=30):
        self.calls.append((method, path, raw))
        return self.data


def fetch(fake, sha, cache):
    return agent_mod.NodeAgent.fetch_bundle(fake, sha, str(cache))


def test_a_bundle_with_its_digest_is_cached_and_served_from_the_cache(tmp_path):
    data = b"\x1f\x8b a bundle"
    sha = hashlib.sha256(data).hexdigest()
    fake = Manager(data)
    path = fetch(fake, sha, tmp_path)
    assert path == os.path.join(str(tmp_path), sha + ".tar.gz")
    with open(path, "rb") as f:
        assert f.read() == data
    assert fake.calls == [("GET", "/v1/bundles/" + sha, True)]
    assert fetch(fake, sha, tmp_path) == path
    assert len(fake.calls) == 1  # the second one came from the cache
    assert os.listdir(tmp_path) == [sha + ".tar.gz"]  # no part file left


def test_a_bundle_altered_on_the_way_is_refused_and_not_cached(tmp_path):
    data = b"\x1f\x8b a bundle"
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(exception.NodeError) as e:
        fetch(Manager(data[:-1]), sha, tmp_path)
    assert sha in e.value.message and hashlib.sha256(data[:-1]).hexdigest() in e.value.message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "A" * 64, "0" * 63, "", None,
                                  "0" * 63 + "/"])
def test_a_name_that_is_not_a_sha256_is_refused_before_any_request(tmp_path, name):
    fake = Manager(b"")
    with pytest.raises(exception.BadRequest) as e:
        fetch(fake, name, tmp_path)
    assert "64 lowercase hex digits" in e.value.message
    assert fake.calls == [] and os.listdir(tmp_path) == []
