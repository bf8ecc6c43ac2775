import pytest

from mec_conpaas import exception
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.manager import auth


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
