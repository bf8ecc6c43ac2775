"""What the manager serves beside its REST API: Prometheus ``/metrics`` and
the web dashboard under ``/dashboard``.

Both use the API's bearer tokens.  The dashboard is static files from this
package (no asset from the internet: the page must work on an edge with
no route out) plus one JSON view of what the caller may see, also streamed
as server-sent events.  The page does every action through the REST API
itself, so it shows the API's own errors.

Login is a PaaS token, or with [api] auth_strategy = keystone a keystone
user name, password, project and domain: the page posts them to
``/dashboard/keystone-login`` on the manager, which asks keystone for a
project-scoped token (``POST /v3/auth/tokens``) and hands the page only the
token, which it then sends as ``X-Auth-Token`` like any keystone client.
The manager relays the password rather than the page posting it to keystone
itself because keystone is usually another origin (its own port or host):
the browser would need keystone to allow this origin by CORS and to expose
``X-Subject-Token``, which keystone does not by default, and the page must
work where the browser can reach the manager only.  The password passes
through the manager's memory for that one request; it is neither stored
nor logged.  Either token is kept in the browser's sessionStorage.
"""
import json
import os
import threading
import time

import flask
import prometheus_client
import requests
from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.api import app as app_mod
from mec_conpaas.api import keystone
from mec_conpaas.api import validation
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import metrics

STATIC = os.path.join(os.path.dirname(__file__), "static", "dashboard")
# How the page may sign in, by [api] auth_strategy: a PaaS token, or keystone
# credentials traded for a token (a person's PaaS token is refused there).
LOGIN_METHODS = {"token": ("token",), "keystone": ("keystone",)}
KEYSTONE_TIMEOUT = 10  # s for keystone's answer, unless [keystone_authtoken] http_connect_timeout
EVENT_INTERVAL = 0.2   # s between looks at the store for an event stream
# s between comments on an idle stream: writing is how the server learns
# that a page went away, and a stream holds one of its [api] threads.
EVENT_KEEPALIVE = 1
EVENT_LIFETIME = 600   # s before a stream ends (the page reconnects)
RECENT_OPERATIONS = 20


class TooManyStreams(exception.MecError):
    status = 503
    code = "too_many_streams"


class KeystoneError(exception.MecError):
    status = 502
    code = "keystone_error"


def keystone_token(conf, body):
    """A project-scoped keystone token for the dashboard's sign-in form.
    ``body`` was checked against openapi.yaml (strings, required fields);
    the password goes to keystone and nowhere else (not into any message)."""
    opts = conf.keystone_authtoken
    base = (getattr(opts, "www_authenticate_uri", None)
            or getattr(opts, "auth_url", None) or "").rstrip("/")
    if not base:
        raise keystone.KeystoneUnavailable(
            "this manager has no keystone address ([keystone_authtoken] "
            "www_authenticate_uri): an admin sets it")
    if not base.endswith("/v3"):
        base += "/v3"
    domain = body.get("domain") or "Default"
    request = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": body["username"], "domain": {"name": domain},
            "password": body["password"]}}},
        "scope": {"project": {"name": body["project"], "domain": {"name": domain}}}}}
    verify = getattr(opts, "cafile", None) or not getattr(opts, "insecure", False)
    try:
        resp = requests.post(base + "/auth/tokens?nocatalog", json=request, verify=verify,
                             timeout=getattr(opts, "http_connect_timeout", None)
                             or KEYSTONE_TIMEOUT)
    except requests.RequestException as e:
        raise keystone.KeystoneUnavailable(
            "keystone (%s) is unreachable from the manager (%s): nothing was "
            "changed; retry when it is back (an admin checks keystone and "
            "[keystone_authtoken])" % (base, type(e).__name__))
    if resp.status_code == 401:
        raise exception.Unauthorized(
            "keystone refused this user name, password, project and domain "
            "(%r, project %r): check them, and that the user has a role on "
            "the project" % (domain, body["project"]))
    token = resp.headers.get("X-Subject-Token")
    if resp.status_code != 201 or not token:
        raise KeystoneError("keystone (%s) answered %d to the sign-in, not a token: "
                            "an admin checks keystone's log" % (base, resp.status_code))
    info = resp.json().get("token", {})
    return {"token": token, "expires_at": info.get("expires_at"),
            "user": info.get("user", {}).get("name"),
            "project": info.get("project", {}).get("name")}


def users_by_ap(manager, session, names, service_ids):
    """``{ap: {"count": n, "users": [...] or None}}`` of the Wi-Fi users the
    access points report (manager/mobility.py, as ``user list`` has them).

    With ``names`` (users:list, admins) every user, by name, with the
    services it used lately.  Otherwise only how many users of the caller's
    own services (``service_ids``, users that sent to one of them within
    [policies] user_idle_timeout) are at each AP, and no names: a user's
    name or MAC with its access point over time is where a person goes,
    which the policy keeps to admins, whereas how many of its own users
    are near each AP is what a tenant needs to see why its service moved
    (follow-the-user), and tells it nothing of other tenants or of people
    who do not use its services."""
    people = manager.mobility.view(session)  # also refreshes where they are
    if not names:
        up = manager.cluster.nodes(session, up_only=True)
        mine = {u["user"] for sid in service_ids
                for u in manager.mobility.service_users(up, sid)}
        people = [p for p in people if p["name"] in mine]
    out = {}
    for p in people:
        at = out.setdefault(p["ap"], {"count": 0, "users": [] if names else None})
        at["count"] += 1
        if names:
            # Not attached_for_s: the view would change at every look, and
            # the event stream sends it only when it changes.
            at["users"].append({"name": p["name"], "previous": p["previous"],
                                "services": p["services"]})
    return out


def snapshot(manager, ctx, every=False, all_instances=False, user_names=False):
    """The dashboard's view: the map (nodes, backbone links, users per
    access point), services with instances and endpoints, recent
    operations.  A tenant sees its own services and operations, only its
    own instances in node reports and how many of its own services' users
    are at each AP; ``every`` (services:list:all_tenants, admins) every
    tenant's, ``all_instances`` (nodes:show:all_instances) every instance,
    and ``user_names`` (users:list) every user by name."""
    topo = manager.cluster.topology or {}
    with session_scope() as s:
        tenants = {t.id: t.name for t in s.scalars(select(models.Tenant))}
        svc_q = select(models.Service).order_by(models.Service.name)
        op_q = select(models.Operation).order_by(
            models.Operation.created_at.desc()).limit(RECENT_OPERATIONS)
        own = None
        if not every:
            svc_q = svc_q.where(models.Service.tenant_id == ctx.tenant_id)
            op_q = op_q.where(models.Operation.tenant_id == ctx.tenant_id)
        if not all_instances:
            own = set(s.scalars(select(models.Instance.id).join(models.Service).where(
                models.Service.tenant_id == ctx.tenant_id)))
        capacity = manager.cluster.capacity(s)
        users = users_by_ap(manager, s, user_names, set(s.scalars(
            select(models.Service.id).where(models.Service.tenant_id == ctx.tenant_id))))
        nodes = []
        for n in manager.cluster.nodes(s):
            view = app_mod.node_view(n, own)
            view["used"] = capacity[n.name]["used"]
            view["users"] = users.get(n.name, {"count": 0, "users": [] if user_names
                                               else None})
            nodes.append(view)
        services = []
        for svc in s.scalars(svc_q):
            view = app_mod.service_view(svc, manager.cluster.service_tiers(s, svc))
            view.update(tenant=tenants.get(svc.tenant_id),
                        own=svc.tenant_id == ctx.tenant_id)
            services.append(view)
        operations = [dict(app_mod.operation_view(o), tenant=tenants.get(o.tenant_id))
                      for o in s.scalars(op_q)]
    return {"user": {"name": ctx.user, "role": ctx.role,
                     "tenant": tenants.get(ctx.tenant_id)},
            "nodes": nodes,
            "links": [{"a": a, "b": b, "latency_ms": ms}
                      for a, b, ms in topo.get("links", [])],
            "services": services, "operations": operations}


def register(app, manager, context, allowed):
    """``context(rule)`` and ``allowed(ctx, rule)`` are the API's own checks
    of the caller against the policy (mec_conpaas/api/policy.py), so that
    the dashboard and /metrics accept whoever the API accepts (PaaS or
    keystone tokens) for what the policy lets them see."""

    def view(ctx):
        return snapshot(manager, ctx, allowed(ctx, "services:list:all_tenants"),
                        allowed(ctx, "nodes:show:all_instances"),
                        allowed(ctx, "users:list"))

    registry = metrics.registry(manager.cluster)
    # Each open stream holds one of the API server's threads: at most half
    # of them, so that the REST API always has the others.
    max_streams = max(1, manager.conf.api.threads // 2)
    streams = threading.BoundedSemaphore(max_streams)
    page = flask.Blueprint("dashboard", __name__, static_folder=STATIC,
                           static_url_path="/dashboard/static")

    @page.get("/metrics")
    def prometheus_metrics():
        """Admin (or node) tokens only: the labels name every tenant's
        services and nodes."""
        context("metrics:get")
        return flask.Response(prometheus_client.generate_latest(registry),
                              content_type=prometheus_client.CONTENT_TYPE_LATEST)

    @page.get("/dashboard")
    def dashboard():
        """The page itself needs no token: it asks for one."""
        resp = flask.send_from_directory(STATIC, "index.html")
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    @page.get("/dashboard/login-methods")
    def login_methods():
        return flask.jsonify(methods=list(LOGIN_METHODS[manager.conf.api.auth_strategy]))

    @page.post("/dashboard/keystone-login")
    def keystone_login():
        """No token needed: this is how the page gets one.  Only where
        people sign in with keystone."""
        validation.raise_if_off_schema()
        if manager.conf.api.auth_strategy != "keystone":
            raise exception.NotFound(
                "this manager signs people in with PaaS tokens ([api] "
                "auth_strategy = token), not keystone: paste your token")
        body = flask.request.get_json(silent=True)
        if not isinstance(body, dict):
            raise exception.BadRequest("request body must be a JSON object")
        resp = flask.jsonify(keystone_token(manager.conf, body))
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @page.get("/dashboard/state")
    def state():
        return flask.jsonify(view(context("dashboard:view")))

    @page.get("/dashboard/events")
    def events():
        """Server-sent events: ``state`` with the whole view whenever it
        changes (looked at every EVENT_INTERVAL).  Read with fetch(), not
        EventSource, so that the token goes in the Authorization header."""
        ctx = context("dashboard:view")
        if not streams.acquire(blocking=False):
            raise TooManyStreams(
                "%d dashboard pages already get live updates (half of the "
                "manager's [api] threads): close one, or raise [api] threads"
                % max_streams)

        def stream():
            last, idle_since, end = None, time.monotonic(), time.monotonic() + \
                EVENT_LIFETIME
            yield "retry: 1000\n\n"
            while time.monotonic() < end and not manager.stop.is_set():
                data = json.dumps(view(ctx), sort_keys=True)
                if data != last:
                    last, idle_since = data, time.monotonic()
                    yield "event: state\ndata: %s\n\n" % data
                elif time.monotonic() - idle_since > EVENT_KEEPALIVE:
                    idle_since = time.monotonic()
                    yield ": keepalive\n\n"
                time.sleep(EVENT_INTERVAL)

        resp = flask.Response(stream(), mimetype="text/event-stream",
                              headers={"Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
        resp.call_on_close(streams.release)  # also if the stream never ran
        return resp

    app.register_blueprint(page)
