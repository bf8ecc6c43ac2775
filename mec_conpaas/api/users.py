"""``/v1/users``: the Wi-Fi users the access points report, and (on the
embedded edge) moving emulated ones.  Admin only by default: where people
are is not a tenant's business (mec_conpaas/api/policy.py ``users:*``).

Where a user is comes from the node agents' station reports (the
manager's mobility loop keeps it, manager/mobility.py); moving one is asked
of the node agent of the access point it goes to, which pulls the user's
Wi-Fi link onto its bridge, as a user walking up to it would associate.
"""
import flask

from mec_conpaas import exception
from mec_conpaas.db.session import session_scope


def forward(client, method, path, body=None):
    """A node agent's refusal (a bad name, a real AP, an unknown user)
    reaches the caller as the same kind of error, with its message."""
    try:
        return client.call(method, path, body, timeout=30)
    except exception.NodeError as e:
        cls = {400: exception.BadRequest, 404: exception.NotFound,
               409: exception.Conflict}.get(getattr(e, "remote_status", None))
        if cls is None:
            raise
        raise cls(e.message.split(": ", 1)[-1]) from None


def register(app, manager, context, json_body):

    def agent(s, ap):
        node = manager.services.node(s, ap)
        if node.state != "up":
            raise exception.Conflict("access point %s is down: users cannot "
                                     "attach to it now" % ap)
        return manager.cluster.ref(node).agent

    def known(s, name):
        for u in manager.mobility.view(s):
            if u["name"] == name:
                return u
        return None

    @app.get("/v1/users")
    def list_users():
        context("users:list")
        with session_scope() as s:
            return flask.jsonify(users=manager.mobility.view(s))

    def attach(name, must_be_attached):
        context("users:move" if must_be_attached else "users:attach")
        ap = json_body().get("ap")
        if not isinstance(ap, str) or not ap:
            raise exception.BadRequest("expected {\"ap\": access point name}")
        with session_scope() as s:
            if must_be_attached and known(s, name) is None:
                raise exception.NotFound("user %s is not attached to any access "
                                         "point: use 'user attach'" % name)
            client = agent(s, ap)
        out = forward(client, "POST", "/v1/stations", {"user": name})
        return flask.jsonify(user=out)

    @app.post("/v1/users/<name>/attach")
    def attach_user(name):
        return attach(name, False)

    @app.post("/v1/users/<name>/move")
    def move_user(name):
        return attach(name, True)

    @app.post("/v1/users/<name>/detach")
    def detach_user(name):
        context("users:detach")
        with session_scope() as s:
            u = known(s, name)
            if u is None:
                raise exception.NotFound("user %s is not attached to any access "
                                         "point (mec-conpaas user list)" % name)
            client = agent(s, u["ap"])
        out = forward(client, "DELETE", "/v1/stations/" + name)
        return flask.jsonify(user=out)
