"""Keystone in front of the API (``[api] auth_strategy = keystone``).

keystonemiddleware's auth_token validates each ``X-Auth-Token`` with
keystone (``[keystone_authtoken]`` options, its own) before the request
reaches Flask; :func:`caller` turns what it vouched for into the PaaS's
:class:`~mec_conpaas.manager.auth.Context`: the tenant is the token's
project (its row created on first sight), admin is ``[api]
keystone_admin_role``. Node agents are not keystone users: their PaaS node
tokens (``Authorization: Bearer``) bypass the middleware and are checked
as before. Either way the same policy rules (mec_conpaas/api/policy.py)
decide what the caller may do.
"""
import json
import logging

from mec_conpaas import exception
from mec_conpaas.manager import auth

LOG = logging.getLogger(__name__)
REACHED = "mec_conpaas.app_reached"


class KeystoneUnavailable(exception.MecError):
    status = 503
    code = "keystone_unavailable"


def install(app, conf):
    """Wrap the Flask app's WSGI callable with auth_token (keystone only)."""
    if conf.api.auth_strategy != "keystone":
        return
    from keystonemiddleware import auth_token

    inner = app.wsgi_app

    def reached(environ, start_response):
        environ[REACHED] = True
        return inner(environ, start_response)

    protocol = auth_token.AuthProtocol(reached, {"oslo_config_config": conf})
    app.wsgi_app = _Dispatch(inner, protocol, conf)


class _Dispatch:
    """Requests with a keystone token go through auth_token; the answers
    auth_token gives itself (keystone unreachable, token refused) are
    rewritten in the API's error format with what to do."""

    def __init__(self, inner, protocol, conf):
        self.inner = inner
        self.protocol = protocol
        self.conf = conf

    def __call__(self, environ, start_response):
        if not environ.get("HTTP_X_AUTH_TOKEN"):
            return self.inner(environ, start_response)
        held = {}

        def hold(status, headers, exc_info=None):
            if environ.get(REACHED):
                return start_response(status, headers, exc_info)
            held.update(status=status, headers=headers)
            return lambda _data: None

        body = self.protocol(environ, hold)
        if environ.get(REACHED) or not held:
            return body
        if hasattr(body, "close"):
            body.close()
        code = int(held["status"][:3])
        opts = self.conf.keystone_authtoken
        uri = getattr(opts, "auth_url", None) or opts.www_authenticate_uri
        if code == 503:
            LOG.error("%s %s: keystone unreachable (keystonemiddleware logged why)",
                      environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            err = KeystoneUnavailable(
                "keystone (%s) is unreachable from the manager, so your token "
                "cannot be checked: nothing was changed; retry when keystone is "
                "back (an admin checks keystone and [keystone_authtoken])" % uri)
        elif code == 401:
            err = exception.Unauthorized(
                "keystone did not accept your token (expired, revoked or not a "
                "token): get a new one with --os-cloud or your OS_* variables")
        else:
            start_response(held["status"], held["headers"])
            return [b""]
        payload = json.dumps({"error": {"code": err.code, "message": err.message}})
        headers = [("Content-Type", "application/json"),
                   ("Content-Length", str(len(payload)))]
        headers += [h for h in held["headers"] if h[0].lower() == "www-authenticate"]
        start_response("%d %s" % (err.status, held["status"][4:]), headers)
        return [payload.encode()]


def caller(session, conf, request):
    """Who sent ``request`` (a Flask request), as an auth Context."""
    environ = request.environ
    header = request.headers.get("Authorization")
    if conf.api.auth_strategy != "keystone":
        if not header and environ.get("HTTP_X_AUTH_TOKEN"):
            raise exception.Unauthorized(
                "this manager uses the PaaS's own tokens ([api] auth_strategy = "
                "token), not keystone's: pass --token or set MEC_CONPAAS_TOKEN")
        return auth.authenticate(session, header)
    token_auth = environ.get("keystone.token_auth")
    if token_auth is None or not environ.get(REACHED):
        if not header:
            raise exception.Unauthorized(
                "this API needs a keystone token: pass --os-cloud NAME or set "
                "your OS_* variables (as for the openstack CLI)")
        ctx = auth.authenticate(session, header)
        if ctx.role != "node":
            raise exception.Unauthorized(
                "this manager authenticates people with keystone "
                "([api] auth_strategy = keystone): use --os-cloud or OS_* "
                "instead of a PaaS token")
        return ctx
    user = token_auth.user
    if user is None or environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
        raise exception.Unauthorized("keystone did not confirm your token: get "
                                     "a new one (--os-cloud or OS_*)")
    if not user.project_id:
        raise exception.Unauthorized(
            "your keystone token is not scoped to a project, and tenants are "
            "projects: set project_name in clouds.yaml or OS_PROJECT_NAME")
    tenant = auth.ensure_project(session, user.project_id, user.project_name)
    roles = tuple(user.role_names or ())
    admin = conf.api.keystone_admin_role in roles
    return auth.Context(role="admin" if admin else "member", user=user.username,
                        tenant_id=tenant.id, roles=roles)
