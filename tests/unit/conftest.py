import pytest

from mec_conpaas import conf as conf_mod
from mec_conpaas.db import session as db


@pytest.fixture
def conf(tmp_path):
    conf = conf_mod.parse_args([])
    conf.set_override("connection", "sqlite:///%s/a.sqlite" % tmp_path, group="database")
    db.reset()
    yield conf
    db.reset()
    conf.clear_override("connection", group="database")


@pytest.fixture
def store(conf):
    """An empty store at the newest schema."""
    db.upgrade()
    yield conf
