import pytest

from mec_conpaas import conf as conf_mod
from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.manager import auth


@pytest.fixture
def store(tmp_path):
    conf = conf_mod.parse_args([])
    conf.set_override("connection", "sqlite:///%s/a.sqlite" % tmp_path, group="database")
    db.reset()
    db.upgrade()
    yield
    db.reset()
    conf.clear_override("connection", group="database")


def test_tokens_are_stored_hashed(store):
    with db.session_scope() as s:
        tenant = auth.ensure_tenant(s, "t1")
        secret = auth.issue(s, "member", "alice", tenant.id)
    with db.session_scope() as s:
        rows = s.query(models.Token).all()
        assert [r.secret_hash for r in rows] == [auth.digest(secret)]
        assert secret not in repr([r.__dict__ for r in rows])
        ctx = auth.authenticate(s, "Bearer " + secret)
        assert (ctx.role, ctx.user, ctx.tenant_id) == ("member", "alice", tenant.id)
        for header in (None, "", "Bearer ", "Basic x", "Bearer nope"):
            with pytest.raises(exception.Unauthorized):
                auth.authenticate(s, header)
