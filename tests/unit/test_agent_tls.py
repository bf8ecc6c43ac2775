"""The node agent's own API over TLS (issue 11): a node that joins an HTTPS
manager with a pinned token gets a certificate for its node id, serves it,
and the manager (and other node agents) check it for that name against the
deployment CA.  Real HTTPS on loopback on both sides."""
import os
import threading

import pytest
from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.agents.node import httpserver
from mec_conpaas.agents.node import joining
from mec_conpaas.db import models
from mec_conpaas.db import session as db
from mec_conpaas.drivers import nodeagent
from mec_conpaas.manager import join
from mec_conpaas.manager import tls
from tests.unit.test_api_nodes import Api
from tests.unit.test_api_nodes import edge  # noqa: F401 (fixture)
from tests.unit.test_join import _join_body
from tests.unit.test_join import _node_conf
from tests.unit.test_join import _registration
from tests.unit.test_join import _token
from tests.unit.test_join import https_manager  # noqa: F401 (fixture)

AGENT_TOKEN = "agent-secret"


def _serve(conf):
    """A node agent API (its real server and router) on loopback, serving
    what joining.server_tls finds."""
    router = httpserver.Router()
    router.add("GET", "/v1/health", lambda body: {"status": "ok"})
    def authenticate(header):
        if header != "Bearer " + AGENT_TOKEN:
            raise exception.Unauthorized("wrong node agent token")
    srv = httpserver.Server(("127.0.0.1", 0), httpserver.make_handler(router, authenticate))
    srv.tls = joining.server_tls(conf)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_joined_node_serves_its_certificate_and_is_checked_for_its_name(
        https_manager, tmp_path, edge):  # noqa: F811
    conf, url, _seen = https_manager
    _admin, _alice, manager = edge
    _tid, secret = _token()
    _node_conf(conf, tmp_path, url, join.format_token(tls.ca_hash(conf.tls.ca_file),
                                                      secret))
    for opt in ("agent_cert_file", "agent_key_file"):
        conf.set_override(opt, str(tmp_path / "node" / opt), group="join")
    # The CA key next to the CA (https_manager made both in tmp_path).
    conf.set_override("ca_key_file", str(tmp_path / "ca-key.pem"), group="tls")
    srv = None
    try:
        body = _join_body(7)
        answer = joining.Membership(conf).join(body)
        assert set(answer["agent_certificate"]) == {"cert", "key"}
        assert os.stat(conf.join.agent_key_file).st_mode & 0o777 == 0o600
        srv = _serve(conf)
        assert srv.tls is not None
        port = srv.server_address[1]
        ca = joining.tls_context(conf.tls.ca_file)
        name = tls.agent_server_name(answer["id"])
        ok = nodeagent.NodeAgentClient("127.0.0.1", port, AGENT_TOKEN, name, ca)
        assert ok.url.startswith("https://") and ok.health() == {"status": "ok"}
        # Another node's name, no CA, plain HTTP: refused.
        for client, why in (
                (nodeagent.NodeAgentClient("127.0.0.1", port, AGENT_TOKEN,
                                           tls.agent_server_name("other"), ca),
                 "match|mismatch"),
                (nodeagent.NodeAgentClient("127.0.0.1", port, AGENT_TOKEN, name,
                                           joining.tls_context(None)), "verify"),
                (nodeagent.NodeAgentClient("127.0.0.1", port, AGENT_TOKEN), None)):
            with pytest.raises(exception.NodeError, match=why):
                client.health(timeout=10)
        # Registered with agent_tls, the manager reaches it over HTTPS for that name.
        reg = dict(_registration(answer | body, "127.0.0.1"), agent_port=port,
                   agent_token=AGENT_TOKEN, agent_tls=True)
        status, _ = Api(manager_app(manager), answer["credential"])(
            "POST", "/v1/nodes/register", json=reg)
        assert status == 200
        with db.session_scope() as s:
            node = s.scalar(select(models.Node).where(models.Node.id == answer["id"]))
            ref = manager.cluster.ref(node)
        assert ref.agent.peer() == {"url": "https://127.0.0.1:%d" % port,
                                    "token": AGENT_TOKEN, "server_name": name}
        assert ref.agent.health() == {"status": "ok"}
    finally:
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        conf.clear_override("ca_key_file", group="tls")
        for opt in ("manager_url", "registration_token"):
            conf.clear_override(opt, group="node_agent")
        for opt in ("manager_ca_file", "credential_file", "agent_cert_file",
                    "agent_key_file"):
            conf.clear_override(opt, group="join")


def manager_app(manager):
    from mec_conpaas.api import app as app_mod
    return app_mod.create_app(manager)


def test_plain_http_manager_issues_no_agent_certificate(edge):  # noqa: F811
    _admin, _alice, manager = edge
    assert tls.issue_agent_cert(manager.conf, "some-node") is None
