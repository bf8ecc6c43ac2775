"""The manager's JSON REST API.

Thin, like nova's ``api/`` over ``compute/api.py``: it authenticates,
validates what it was sent and records.  What to do (which node, whether
there is room, which port, whether the driver can do it) is asked of the
service layer (``manager.services``), which the workflows share; mutating
calls persist an operation and return 202, and the engine does the work.
"""
import datetime
import logging
import os
import re
import tempfile

import flask
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import object_session

from mec_conpaas import bundles
from mec_conpaas import exception
from mec_conpaas.api import join as join_api
from mec_conpaas.api import keystone
from mec_conpaas.api import policy
from mec_conpaas.api import validation
from mec_conpaas.db import models
from mec_conpaas.db.session import session_scope
from mec_conpaas.manager import engine as engine_mod
from mec_conpaas.manager import enrollment
from mec_conpaas.manager import inventory
from mec_conpaas.manager import qos as qos_mod
from mec_conpaas.manager import routecache
from mec_conpaas.policies import qos as qos_policy

LOG = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
SERVICE_TYPES = ("generic", "web", "flink")


class StoreUnavailable(exception.MecError):
    status = 503
    code = "store_unavailable"


def _iso(ts):
    return ts.replace(tzinfo=datetime.timezone.utc).isoformat() if ts else None


def node_view(node, own=None):
    """A node as a caller sees it: with ``own`` (a tenant's instance ids),
    the report's per-container usage keeps only those: tenants must not
    learn which instances other tenants run where."""
    report = dict(node.report or {})
    if own is not None:
        report["containers"] = {k: v for k, v in (report.get("containers") or {}).items()
                                if k in own}
        # Where users are and what they use is not a tenant's (users:list).
        report.pop("stations", None)
        report.pop("services", None)
    # The owner's card mistakes (first boot) are the operator's, not a tenant's.
    warnings = (node.settings_warnings or []) if own is None else None
    return {"id": node.id, "name": node.name, "state": node.state,
            "address": node.address, "hostname": node.hostname, "mac": node.mac,
            "container_backend": node.container_backend,
            "max_instances": node.max_instances,
            "schedulable": not node.disabled,
            "disabled_reason": node.disabled_reason,
            "settings_warnings": warnings,
            "last_heartbeat": _iso(node.last_heartbeat),
            # What the allocator gave it (manager/allocation.py), if anything.
            "allocation": join_api.allocation.view(join_api.allocation.of_node(
                object_session(node), node.id)) if object_session(node) else None,
            "report": report}


def service_view(svc, tiers=None):
    """``tiers`` (Cluster.service_tiers): per access point, what each active
    instance is to its proxy; an instance's own ``tier`` is the one seen
    from the service's home node (None: not serving, or home is down)."""
    tiers = tiers or {}
    home = tiers.get(svc.home_node, {})
    return {"id": svc.id, "name": svc.name, "type": svc.type, "state": svc.state,
            "home_node": svc.home_node, "port": svc.port,
            "instances": [{"id": i.id, "node": i.node_name, "address": i.address,
                           "state": i.state, "role": i.role,
                           "tier": home.get(i.id),
                           "cpus": i.cpus if i.cpus is not None else svc.cpus,
                           "memory_mb": i.memory_mb if i.memory_mb is not None
                           else svc.memory_mb}
                          for i in svc.instances],
            "tiers": tiers,
            "bundle_sha256": svc.bundle_sha256, "error": svc.error,
            "qos": qos_policy.of(svc).as_dict(),
            # The operation holding the service, if one runs on it.
            "operation": svc.operation_id,
            "created_at": _iso(svc.created_at), "updated_at": _iso(svc.updated_at)}


def operation_view(op):
    return {"id": op.id, "kind": op.kind, "state": op.state,
            "progress": op.progress, "step": op.step, "error": op.error,
            "service": op.service_name, "params": op.params,
            "attempts": op.attempts, "created_at": _iso(op.created_at),
            # Measured timings of migration's critical windows (ms).
            "windows": (op.journal or {}).get("windows", []),
            "updated_at": _iso(op.updated_at)}


def create_app(manager):
    conf = manager.conf
    services = manager.services
    app = flask.Flask("mec_conpaas")
    app.config["MAX_CONTENT_LENGTH"] = conf.manager.max_bundle_size + 1024 * 1024
    bundle_dir = os.path.join(conf.state_path, "bundles")
    os.makedirs(bundle_dir, exist_ok=True)
    validation.install(app, conf.api.validate_responses)
    keystone.install(app, conf)

    @app.get("/v1/openapi.json")
    def openapi_document():
        """Unauthenticated, like OpenStack's version documents: it tells
        nothing about what exists."""
        return flask.jsonify(validation.document())

    @app.errorhandler(exception.MecError)
    def mec_error(e):
        return flask.jsonify(error={"code": e.code, "message": e.message}), e.status

    # The store's own errors never reach a user raw: a constraint broken by
    # a concurrent change is a conflict to retry, a busy or unreachable
    # database a 503 to retry later; the transaction was rolled back.
    @app.errorhandler(sa_exc.SQLAlchemyError)
    def store_error(e):
        LOG.error("%s %s: %s", flask.request.method, flask.request.path, e)
        if isinstance(e, sa_exc.IntegrityError):
            return mec_error(exception.Conflict(
                "the request conflicts with a concurrent change (a name, port or "
                "service taken meanwhile): nothing was changed; retry"))
        if isinstance(e, (sa_exc.OperationalError, sa_exc.TimeoutError)):
            return mec_error(StoreUnavailable(
                "the manager's database is busy or unreachable: nothing was "
                "changed; retry in a few seconds (the manager log says more)"))
        return internal_error(e)

    @app.errorhandler(500)
    def internal_error(e):
        LOG.error("%s %s failed: %r", flask.request.method, flask.request.path,
                  getattr(e, "original_exception", e))
        return flask.jsonify(error={
            "code": "internal_error",
            "message": "the manager failed on this request (its log says why)"}), 500

    @app.errorhandler(413)
    def too_large(_e):
        return flask.jsonify(error={
            "code": "bundle_too_large",
            "message": "request is larger than [manager] max_bundle_size "
                       "(%d bytes)" % conf.manager.max_bundle_size}), 413

    @app.errorhandler(404)
    def not_found(_e):
        return flask.jsonify(error={"code": "not_found",
                                    "message": "no such API path"}), 404

    @app.errorhandler(405)
    def not_allowed(_e):
        return flask.jsonify(error={"code": "method_not_allowed",
                                    "message": "method not allowed here"}), 405

    def context(rule):
        """The caller, if the policy lets it apply ``rule`` (mec_conpaas/api/
        policy.py: a denied node-private endpoint answers like an unknown path)."""
        with session_scope() as s:
            ctx = keystone.caller(s, conf, flask.request)
        policy.authorize(conf, rule, ctx.creds(), {"project_id": ctx.tenant_id})
        validation.raise_if_off_schema()
        return ctx

    def allowed(ctx, rule):
        return policy.check(conf, rule, ctx.creds(), {"project_id": ctx.tenant_id})

    def json_body(optional=False):
        body = flask.request.get_json(silent=True)
        if body is None and optional and not flask.request.get_data():
            return {}
        if not isinstance(body, dict):
            raise exception.BadRequest("request body must be a JSON object")
        return body

    def get_service(s, ctx, name):
        svc = s.scalar(select(models.Service).where(
            models.Service.tenant_id == ctx.tenant_id, models.Service.name == name))
        if svc is None:
            raise exception.NotFound("no service named %r (mec-conpaas service "
                                     "list shows yours)" % name)
        return svc

    def accepted(op_id):
        manager.engine.submit(op_id)
        with session_scope() as s:
            op = s.get(models.Operation, op_id)
            svc = s.get(models.Service, op.service_id) if op.service_id else None
            return flask.jsonify(operation=operation_view(op),
                                 service=service_view(
                                     svc, manager.cluster.service_tiers(s, svc))
                                 if svc else None), 202

    # -- nodes -------------------------------------------------------------
    @app.post("/v1/nodes/register")
    def register_node():
        ctx = context("nodes:register")
        body = json_body()
        required = ("id", "name", "hostname", "mac", "address", "agent_port",
                    "agent_token")
        missing = [k for k in required if not body.get(k)]
        if missing:
            raise exception.BadRequest("registration lacks " + ", ".join(missing))
        with session_scope() as s:
            node = s.get(models.Node, body["id"])
            clash = s.scalar(select(models.Node).where(
                models.Node.name == body["name"]))
            if clash is not None and clash.id != body["id"]:
                raise exception.Conflict(
                    "node name %r is already used by %s (MAC %s): give this "
                    "node another [node_agent] node_name" % (
                        body["name"], clash.hostname, clash.mac))
            if node is None:
                node = models.Node(id=body["id"])
                s.add(node)
            for key in ("name", "hostname", "mac", "address", "agent_port",
                        "agent_token", "instance_network"):
                setattr(node, key, body.get(key))
            join_api.on_register(s, conf, ctx, body, node, manager.cluster.driver)
            node.container_backend = body.get("container_backend", "libvirt")
            node.max_instances = int(body.get("max_instances", 0))
            node.settings_warnings = join_api.settings_warnings(body)
            node.last_heartbeat = models.utcnow()
            node.state = "up"
        LOG.info("node %s registered from %s", body["name"], body["address"])
        return flask.jsonify(id=body["id"])

    @app.get("/v1/nodes/enrollment")
    def node_enrollment():
        """The deployment's OpenStack service credentials, for a node's first
        boot; the file is read on each request (rotation needs no restart)."""
        ctx = join_api.enrollment_caller(context)
        creds = enrollment.load(conf.manager.openstack_enrollment_file)
        LOG.info("OpenStack enrollment fetched with %s token %s (user %s) from %s",
                 ctx.role, ctx.token_id, ctx.user, flask.request.remote_addr)
        return flask.jsonify(openstack=creds)

    @app.post("/v1/nodes/<node_id>/heartbeat")
    def heartbeat(node_id):
        ctx = context("nodes:heartbeat")
        body = json_body()
        with session_scope() as s:
            answer = join_api.heartbeat_answer(s, ctx, node_id,
                                               body.get("routes_version"))
            node = s.get(models.Node, node_id)
            if node is None:
                raise exception.NotFound("unknown node; register first")
            node.report = body.get("report") or {}
            node.last_heartbeat = models.utcnow()
            node.state = "up"
        # Where its liveness datagrams go (manager/liveness.py), if on.
        answer.update(manager.liveness.advertise(node_id))
        return routecache.jsonify(ok=True, **answer)  # the routes encoded once

    def own_instances(s, ctx):
        """Instance ids the caller may see in node reports (None: all)."""
        if allowed(ctx, "nodes:show:all_instances"):
            return None
        return set(s.scalars(select(models.Instance.id).join(models.Service).where(
            models.Service.tenant_id == ctx.tenant_id)))

    @app.get("/v1/nodes")
    def list_nodes():
        ctx = context("nodes:list")
        with session_scope() as s:
            own = own_instances(s, ctx)
            nodes = manager.cluster.nodes(s)
            return flask.jsonify(nodes=inventory.annotate(
                [node_view(n, own) for n in nodes], nodes,
                manager.cluster.driver.node_inventory()))

    @app.get("/v1/nodes/<name>")
    def show_node(name):
        ctx = context("nodes:show")
        cloud = manager.cluster.driver.node_inventory()
        with session_scope() as s:
            try:
                node = services.node(s, name)
            except exception.NotFound:
                if not cloud or name not in cloud:
                    raise
                return flask.jsonify(node=inventory.unregistered_view(name, cloud[name]))
            return flask.jsonify(node=inventory.annotate(
                [node_view(node, own_instances(s, ctx))], [node], cloud)[0])

    @app.post("/v1/nodes/<name>/drain")
    def drain_node(name):
        """Make a node unschedulable and move every instance off it.

        All or nothing: when a service on the node is busy or the other
        nodes lack the slots, the answer is 409 and nothing changes.
        """
        context("nodes:drain")
        reason = json_body(optional=True).get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 255):
            raise exception.BadRequest("reason must be a text of at most 255 "
                                       "characters")
        with session_scope() as s:
            node = services.node(s, name)
            tenants = {t.id: t.name for t in s.scalars(select(models.Tenant))}
            svcs, plan = services.plan_drain(s, node, tenants)
            node.disabled = True
            node.disabled_reason = reason or node.disabled_reason
            op_ids = [services.start(s, "drain", v, "ADAPTING", ("RUNNING",), "drained",
                                     drain=node.name, **plan[v.id]).id
                      for v in svcs if v.id in plan]
            left = engine_mod.leftovers(s, node.name)
            view = node_view(node)
        LOG.info("node %s disabled (%s); drain: %d operation(s), %d leftover "
                 "instance(s) for the sweep", view["name"], view["disabled_reason"],
                 len(op_ids), len(left))
        for op_id in op_ids:
            manager.engine.submit(op_id)
        if left or not op_ids:
            # Nothing (more) to move: what the sweep would remove there
            # (leftover rows, orphaned containers) goes now, not within
            # [manager] orphan_sweep_interval.
            manager.sweep_soon()
        with session_scope() as s:
            ops = [s.get(models.Operation, i) for i in op_ids]
            return flask.jsonify(node=view, leftovers=left, operations=[
                dict(operation_view(o), tenant=tenants.get(o.tenant_id))
                for o in ops]), 202 if ops else 200

    @app.post("/v1/nodes/<name>/enable")
    def enable_node(name):
        context("nodes:enable")
        with session_scope() as s:
            node = services.node(s, name)
            node.disabled = False
            node.disabled_reason = None
            return flask.jsonify(node=node_view(node))

    @app.get("/v1/bundles/<sha>")
    def get_bundle(sha):
        context("bundles:get")
        if not bundles.is_sha256(sha):
            raise exception.NotFound("no such bundle")
        path = os.path.join(bundle_dir, sha + ".tar.gz")
        if not os.path.exists(path):
            raise exception.NotFound("no such bundle")
        return flask.send_file(path, mimetype="application/gzip")

    # -- services ----------------------------------------------------------
    @app.post("/v1/services")
    def create_service():
        ctx = context("services:create")
        form = flask.request.form
        name = form.get("name", "")
        stype = form.get("type", "")
        if stype not in SERVICE_TYPES:
            raise exception.BadRequest("unknown service type %r: use one of %s"
                                       % (stype, ", ".join(SERVICE_TYPES)))
        if not NAME_RE.fullmatch(name):  # match() would let "web\n" in
            raise exception.BadRequest(
                "invalid service name %r: use 1-32 lowercase letters, digits "
                "and '-', starting with a letter" % name)
        try:
            count = int(form.get("count", "1"))
        except ValueError:
            raise exception.BadRequest("count must be an integer")
        if count < 1:
            raise exception.BadRequest("a new service needs count >= 1")
        qos_spec = qos_policy.parse(form, count)
        # Everything that needs no bundle is checked before one is stored.
        with session_scope() as s:
            if s.scalar(select(models.Service).where(
                    models.Service.tenant_id == ctx.tenant_id,
                    models.Service.name == name)):
                raise exception.Conflict("a service named %r exists already: "
                                         "pick another name" % name)
            services.check_create(s, count, form.get("node"))
        upload = flask.request.files.get("bundle")
        with tempfile.NamedTemporaryFile(dir=bundle_dir, delete=False,
                                         suffix=".part") as tmp:
            try:
                if upload is not None:
                    upload.save(tmp)
                elif stype == "web":
                    tmp.write(manager.sample_bundle())
                else:
                    raise exception.BadRequest(
                        "a generic service needs --bundle FILE (a .tar.gz "
                        "with run.sh)" if stype != "flink" else "a flink "
                        "service needs --bundle JOB (a PyFlink job.py or a .jar)")
                tmp.flush()
                info = bundles.validate(tmp.name, stype,
                                        conf.manager.max_bundle_size,
                                        conf.manager.max_bundle_members)
                os.replace(tmp.name, os.path.join(bundle_dir,
                                                  info.sha256 + ".tar.gz"))
            finally:
                if os.path.exists(tmp.name):
                    os.unlink(tmp.name)
        with session_scope() as s:
            if s.scalar(select(models.Service).where(
                    models.Service.tenant_id == ctx.tenant_id,
                    models.Service.name == name)):
                raise exception.Conflict("a service named %r exists already: "
                                         "pick another name" % name)
            node_name = services.choose_home(s, form.get("node"))
            # ENORM's admission: resources and priority (may evict lower
            # priorities to another node, before this create runs).
            priority = qos_spec["priority"] if qos_spec["priority"] is not None \
                else conf.qos.default_priority
            node_name, evictions, pinned = services.admit(
                s, node_name if form.get("node") else None, count,
                (services.instance_cpus(stype), services.instance_memory_mb(stype)),
                priority)
            port = services.allocate_port(s)
            # Held by its create from the start: a delete meanwhile gets 409.
            op_id = models.new_id()
            svc = models.Service(tenant_id=ctx.tenant_id, name=name, type=stype,
                                 state="INIT", home_node=node_name, port=port,
                                 bundle_sha256=info.sha256,
                                 memory_mb=services.instance_memory_mb(stype),
                                 cpus=services.instance_cpus(stype),
                                 operation_id=op_id, **qos_spec)
            s.add(svc)
            try:
                s.flush()
            except sa_exc.IntegrityError:
                raise exception.Conflict("service name or port taken "
                                         "concurrently; retry")
            after = qos_mod.evict(s, services, evictions, "to admit %s (priority %d) "
                                  "on %s" % (name, priority, node_name))
            s.add(models.Operation(id=op_id, tenant_id=ctx.tenant_id,
                                   service_id=svc.id, service_name=name,
                                   kind="create", params={"count": count,
                                                          "node": node_name,
                                                          **({"pin": True}
                                                             if pinned else {}),
                                                          **({"after": after}
                                                             if after else {})},
                                   journal={}))
        for evict_id in after:
            manager.engine.submit(evict_id)
        return accepted(op_id)

    @app.get("/v1/services")
    def list_services():
        ctx = context("services:list")
        every = policy.flag(flask.request.args, "all_tenants")
        if every:  # like nova's --all-projects: each service names its tenant
            policy.authorize(conf, "services:list:all_tenants", ctx.creds(),
                             {"project_id": ctx.tenant_id})
        with session_scope() as s:
            query = select(models.Service).order_by(models.Service.name)
            if not every:
                query = query.where(models.Service.tenant_id == ctx.tenant_id)
            tenants = {t.id: t.name for t in s.scalars(select(models.Tenant))}
            return flask.jsonify(services=[
                dict(service_view(v, manager.cluster.service_tiers(s, v)),
                     **({"tenant": tenants.get(v.tenant_id)} if every else {}))
                for v in s.scalars(query)])

    @app.get("/v1/services/<name>")
    def show_service(name):
        ctx = context("services:show")
        with session_scope() as s:
            svc = get_service(s, ctx, name)
            return flask.jsonify(service=service_view(
                svc, manager.cluster.service_tiers(s, svc)))

    @app.delete("/v1/services/<name>")
    def delete_service(name):
        """Accepted in any state no operation holds (a delete waits for
        nothing: 409 while a create, scale, ... runs, retry when it ends).

        ``?force=true`` (admins) forgets the instances and proxies it cannot
        reach, e.g. on a node that will not come back.
        """
        ctx = context("services:delete")
        force = policy.flag(flask.request.args, "force")
        if force:
            policy.authorize(
                conf, "services:delete:force", ctx.creds(), {"project_id": ctx.tenant_id},
                "only an admin can force a delete (it forgets instances on nodes "
                "that do not answer): delete without force; instances on a down "
                "node are removed when it is back")
        with session_scope() as s:
            svc = get_service(s, ctx, name)
            engine_mod.refuse(s, svc, None, "deleted")
            op_id = services.start(s, "delete", svc, "EPILOGUE", action="deleted",
                                   **({"force": True} if force else {})).id
        return accepted(op_id)

    @app.post("/v1/services/<name>/scale")
    def scale_service(name):
        ctx = context("services:scale")
        body = json_body()
        count = body.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise exception.BadRequest("count must be an integer >= 0")
        node = body.get("node")
        if node is not None and not isinstance(node, str):
            raise exception.BadRequest("node must be a node name")
        with session_scope() as s:
            svc = get_service(s, ctx, name)
            engine_mod.refuse(s, svc, ("RUNNING",), "scaled")
            current = services.check_scale(s, svc, count, node or None)
            op_id = services.start(s, "scale", svc, "ADAPTING", ("RUNNING",), "scaled",
                                   count=count, previous=current, node=node).id
        return accepted(op_id)

    @app.post("/v1/services/<name>/migrate")
    def migrate_service(name):
        ctx = context("services:migrate")
        body = json_body()
        target = body.get("to")
        if not isinstance(target, str) or not target:
            raise exception.BadRequest("migrate needs 'to': the target node name")
        with session_scope() as s:
            svc = get_service(s, ctx, name)
            engine_mod.refuse(s, svc, ("RUNNING",), "migrated")
            services.check_migrate(s, svc, target)
            extra = {"order": body["order"]} if body.get("order") else {}
            op_id = services.start(s, "migrate", svc, "ADAPTING", ("RUNNING",), "migrated",
                                   to=target, source=svc.home_node, **extra).id
        return accepted(op_id)

    @app.post("/v1/services/<name>/stop")
    def stop_service(name):
        """Stop every instance, keeping its state (on the manager) and the
        service's endpoint port."""
        ctx = context("services:stop")
        with session_scope() as s:
            svc = get_service(s, ctx, name)
            engine_mod.refuse(s, svc, ("RUNNING",), "stopped")
            count = len([i for i in svc.instances if i.state == "ACTIVE"])
            op_id = services.start(s, "stop", svc, "EPILOGUE", ("RUNNING",), "stopped",
                                   count=count).id
        return accepted(op_id)

    @app.post("/v1/services/<name>/start")
    def start_service(name):
        """Bring a stopped service's instances back with their state."""
        ctx = context("services:start")
        with session_scope() as s:
            svc = get_service(s, ctx, name)
            engine_mod.refuse(s, svc, ("STOPPED",), "started")
            count = services.check_start(s, svc)
            op_id = services.start(s, "start", svc, "PROLOGUE", ("STOPPED",), "started",
                                   count=count).id
        return accepted(op_id)

    @app.get("/v1/services/<name>/logs")
    def service_logs(name):
        ctx = context("services:logs")
        with session_scope() as s:
            sid = get_service(s, ctx, name).id
        return flask.jsonify(logs=services.logs(sid))

    # -- operations --------------------------------------------------------
    @app.get("/v1/operations")
    def list_operations():
        ctx = context("operations:list")
        with session_scope() as s:
            ops = s.scalars(select(models.Operation).where(
                models.Operation.tenant_id == ctx.tenant_id)
                .order_by(models.Operation.created_at.desc()).limit(100))
            return flask.jsonify(operations=[operation_view(o) for o in ops])

    @app.get("/v1/operations/<op_id>")
    def show_operation(op_id):
        ctx = context("operations:show")
        with session_scope() as s:
            op = s.get(models.Operation, op_id)
            # Admins follow any tenant's operation (a node drain's).
            if op is None or (op.tenant_id != ctx.tenant_id
                              and not allowed(ctx, "operations:show:all_tenants")):
                raise exception.NotFound("no operation %s" % op_id)
            return flask.jsonify(operation=operation_view(op))

    # /metrics and /dashboard (mec_conpaas/api/web.py).
    from mec_conpaas.api import web
    web.register(app, manager, context, allowed)
    # Joining, node removal, node credentials (mec_conpaas/api/join.py).
    join_api.register(app, manager, context)
    # /v1/users (mec_conpaas/api/users.py).
    from mec_conpaas.api import users
    users.register(app, manager, context, json_body)
    return app
