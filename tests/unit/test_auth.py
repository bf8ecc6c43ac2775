import pytest

from mec_conpaas import exception
from mec_conpaas.api import app as app_mod
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.manager import auth
from tests.unit.test_api_nodes import Manager


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


def test_a_keystone_token_on_a_token_manager_is_told_what_to_use(store, tmp_path):
    store.set_override("state_path", str(tmp_path))
    try:
        client = app_mod.create_app(Manager(store)).test_client()
        resp = client.get("/v1/services", headers={"X-Auth-Token": "gAAAA-keystone"})
    finally:
        store.clear_override("state_path")
    assert resp.status_code == 401
    assert "auth_strategy = token" in resp.get_json()["error"]["message"]
