"""What the manager serves beside its REST API: Prometheus ``/metrics`` and
the web dashboard under ``/dashboard``.

Both use the API's bearer tokens.  The dashboard is static files from this
package (no asset from the internet: the page must work on an edge with
no route out) plus one JSON view of what the caller may see, also streamed
as server-sent events.  The page does every action through the REST API
itself, so it shows the API's own errors.

Login is a PaaS token (kept in the browser's sessionStorage).  A keystone
login hooks in at ``LOGIN_METHODS``: the API's own checks (``register``'s
``context``) already accept keystone tokens with [api] auth_strategy =
keystone, but the page sends ``Authorization: Bearer`` and has no way yet
to obtain a keystone token from a user name and password.
"""
import json
import os
import threading
import time

import flask
import prometheus_client
from sqlalchemy import select

from mec_conpaas import exception
from mec_conpaas.api import app as app_mod
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import metrics

STATIC = os.path.join(os.path.dirname(__file__), "static", "dashboard")
# How the page may sign in: "token" (a PaaS token).  A keystone login adds
# "keystone" here and a route that trades credentials for a token.
LOGIN_METHODS = ("token",)
EVENT_INTERVAL = 0.2   # s between looks at the store for an event stream
# s between comments on an idle stream: writing is how the server learns
# that a page went away, and a stream holds one of its [api] threads.
EVENT_KEEPALIVE = 1
EVENT_LIFETIME = 600   # s before a stream ends (the page reconnects)
RECENT_OPERATIONS = 20


class TooManyStreams(exception.MecError):
    status = 503
    code = "too_many_streams"


def snapshot(manager, ctx, every=False, all_instances=False):
    """The dashboard's view: the map (nodes, backbone links), services with
    instances and endpoints, recent operations.  A tenant sees its own
    services and operations, and only its own instances in node reports;
    ``every`` (services:list:all_tenants, admins) every tenant's, and
    ``all_instances`` (nodes:show:all_instances) every instance."""
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
        nodes = []
        for n in manager.cluster.nodes(s):
            view = app_mod.node_view(n, own)
            view["used"] = capacity[n.name]["used"]
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
                        allowed(ctx, "nodes:show:all_instances"))

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
        return flask.jsonify(methods=list(LOGIN_METHODS))

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
